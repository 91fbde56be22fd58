#[flip::starter]
fn listeners() -> Result<(), flip::Error> {
    Ok(())
}

fn main() {}
