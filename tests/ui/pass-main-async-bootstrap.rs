#[flip::starter]
async fn listeners(ctx: flip::StartContext) -> std::io::Result<()> {
    let _ = ctx.shutdown();
    Ok(())
}

#[flip::main]
async fn main(bootstrap: &mut flip::Bootstrap) -> Result<(), String> {
    bootstrap.set_grace_period(std::time::Duration::from_secs(1));
    assert_eq!(bootstrap.starter_names(), ["listeners"]);
    // trybuild runs what compiles: leave before the server would wait for signals.
    std::process::exit(0);
}
