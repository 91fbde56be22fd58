#[flip::main]
fn main<T>() {}
