struct NotAnError;

#[flip::main]
fn main() -> Result<(), NotAnError> {
    Ok(())
}
