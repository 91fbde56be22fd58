//! Attribute macros of flip. Use them through the `flip` crate: `#[flip::main]` and
//! `#[flip::starter]`.

use proc_macro::TokenStream;

mod entry;
mod health;
mod starter;

/// Turns `main` into a flip program: reads the environment, builds the `Bootstrap`, registers
/// every `#[flip::starter]`, runs the body, then starts, waits and exits with a code that says
/// what happened. See the `flip` crate for the arguments.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::main(args.into(), item.into()).into()
}

/// Registers a function that opens listeners and starts serving. See the `flip` crate.
#[proc_macro_attribute]
pub fn starter(args: TokenStream, item: TokenStream) -> TokenStream {
    starter::starter(args.into(), item.into()).into()
}

/// Registers an `async fn() -> Result<(), E>` that `#[flip::main]` runs during an upgrade's
/// probation. See the `flip` crate.
#[proc_macro_attribute]
pub fn health(args: TokenStream, item: TokenStream) -> TokenStream {
    health::health(args.into(), item.into()).into()
}
