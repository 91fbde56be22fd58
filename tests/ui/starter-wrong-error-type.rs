struct NotAnError;

#[flip::starter]
fn http(_ctx: &flip::StartContext) -> Result<(), NotAnError> {
    Ok(())
}

#[flip::main]
fn main() {}
