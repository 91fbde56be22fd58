#[flip::starter(order = 1)]
fn listeners(_ctx: &flip::StartContext) -> Result<(), flip::Error> {
    Ok(())
}

fn main() {}
