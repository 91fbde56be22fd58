#[flip::main(grace = "1s", grace = "2s")]
fn main() {}
