#[flip::main]
fn main(_bootstrap: &mut flip::Bootstrap, _extra: u8) {}
