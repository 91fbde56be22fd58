#[flip::starter]
fn listeners<E>(_ctx: &flip::StartContext) -> Result<(), E> {
    Ok(())
}

fn main() {}
