#[flip::main]
fn main(_port: u16) {}
