#[flip::main(pid_file = "/tmp/x.pid")]
fn main() {}
