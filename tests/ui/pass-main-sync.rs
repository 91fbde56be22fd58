#[flip::starter]
fn listeners(_ctx: &flip::StartContext) -> Result<(), flip::Error> {
    Ok(())
}

#[flip::main(pidfile = "/tmp/ui.pid", env_prefix = "UI", grace = "30s", upgrade_timeout = "1500ms", standby = true, supervise = false)]
fn main() {
    // trybuild runs what compiles: leave before the server would wait for signals.
    std::process::exit(0);
}
