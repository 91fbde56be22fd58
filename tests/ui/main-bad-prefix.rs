#[flip::main(env_prefix = "my-app")]
fn main() {}
