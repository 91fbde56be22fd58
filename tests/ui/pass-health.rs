#[flip::health]
async fn backend() -> Result<(), std::io::Error> {
    Ok(())
}

#[flip::main]
fn main() {
    // trybuild runs what compiles: leave before the server would wait for signals.
    std::process::exit(0);
}
