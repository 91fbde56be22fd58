//! `#[flip::health]`: registers a health check with `inventory` so `#[flip::main]` runs it
//! during an upgrade's probation.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType};

use crate::entry::{Errors, crate_path, parse_crate_only, with_error};

const ALLOWED_ARGS: &str =
    "#[flip::health] takes no arguments but `crate = \"path::to::flip\"`, once";
const ALLOWED_FORMS: &str =
    "a health check is `async fn name() -> Result<(), E>` where `E` is displayable";

pub(crate) fn health(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => return with_error(item, e),
    };
    let mut errors = Errors::default();
    let krate = parse_crate_only(args, ALLOWED_ARGS, &mut errors);
    if let Err(e) = check_signature(&func) {
        errors.push(e);
        return errors.emit(func.into_token_stream());
    }
    let flip = crate_path(krate.as_ref());
    let name = &func.sig.ident;
    let name_str = name.to_string();
    // Spanned on the return type, so that an error type flip cannot show is reported there.
    let convert = quote_spanned! {func.sig.output.span()=>
        #flip::__rt::HealthResult::into_health_result(#name().await)
    };
    errors.emit(quote! {
        #func

        const _: () = {
            fn check() -> #flip::BoxFuture<::core::result::Result<(), ::std::string::String>> {
                ::std::boxed::Box::pin(async move { #convert })
            }
            #flip::__rt::inventory::submit! {
                #flip::__rt::HealthEntry {
                    name: #name_str,
                    module: ::core::module_path!(),
                    check,
                }
            }
        };
    })
}

fn check_signature(func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            format!("a health check is async; {ALLOWED_FORMS}"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            format!("a health check cannot be generic; {ALLOWED_FORMS}"),
        ));
    }
    if let Some(arg) = sig.inputs.first() {
        return Err(syn::Error::new_spanned(
            arg,
            format!("a health check takes no arguments; {ALLOWED_FORMS}"),
        ));
    }
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new_spanned(
            &sig.ident,
            format!("a health check returns `Result<(), E>`; {ALLOWED_FORMS}"),
        ));
    }
    Ok(())
}
