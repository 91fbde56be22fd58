#[flip::main(pidfile)]
fn main() {}
