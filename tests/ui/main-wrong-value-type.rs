#[flip::main(grace = 30)]
fn main() {}
