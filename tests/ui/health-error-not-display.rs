struct Opaque;

#[flip::health]
async fn backend() -> Result<(), Opaque> {
    Ok(())
}

#[flip::main]
fn main() {
    std::process::exit(0);
}
