#[flip::main(timeout = "5s")]
async fn main() {}
