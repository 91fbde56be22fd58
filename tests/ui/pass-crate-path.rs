// A crate that re-exports flip names it with `crate = "..."`.
mod framework {
    pub use flip as upgrades;
}

#[flip::starter(crate = "framework::upgrades")]
fn http(_ctx: &framework::upgrades::StartContext) -> Result<(), std::io::Error> {
    Ok(())
}

#[flip::main(crate = "framework::upgrades", pidfile = "/tmp/flip-ui.pid")]
fn main() {
    std::process::exit(0);
}
