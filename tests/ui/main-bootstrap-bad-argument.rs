#[flip::main(pidfile = "")]
fn main(bootstrap: &mut flip::Bootstrap) {
    bootstrap.set_grace_period(std::time::Duration::from_secs(1));
}
