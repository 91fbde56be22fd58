#[flip::health]
async fn backend(timeout: u64) -> Result<(), String> {
    let _ = timeout;
    Ok(())
}

#[flip::main]
fn main() {
    std::process::exit(0);
}
