#[flip::starter]
fn listeners(_addr: &str) -> Result<(), flip::Error> {
    Ok(())
}

fn main() {}
