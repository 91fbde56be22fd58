#[flip::main(upgrade_timeout = "10 seconds")]
fn main() {}
