#[flip::health]
fn backend() -> Result<(), String> {
    Ok(())
}

#[flip::main]
fn main() {
    std::process::exit(0);
}
