#[flip::main(standby = "yes")]
fn main() {}
