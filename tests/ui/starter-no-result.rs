#[flip::starter]
fn listeners(_ctx: &flip::StartContext) {}

fn main() {}
