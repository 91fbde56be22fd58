#[flip::starter(crate = 5)]
fn listen(_ctx: &flip::StartContext) -> Result<(), flip::Error> {
    Ok(())
}

fn main() {}
