//! `#[flip::starter]`: registers a function with `inventory` so `#[flip::main]` finds it.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

use crate::entry::{Errors, crate_path, parse_crate_only, with_error};

const ALLOWED_ARGS: &str =
    "#[flip::starter] takes no arguments but `crate = \"path::to::flip\"`, once";
const ALLOWED_FORMS: &str = "a starter is `fn name(ctx: &flip::StartContext) -> Result<(), E>` \
                             or takes `ctx: flip::StartContext`, and may be `async`";

pub(crate) fn starter(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => return with_error(item, e),
    };
    let mut errors = Errors::default();
    let krate = parse_crate_only(args, ALLOWED_ARGS, &mut errors);
    let by_ref = match check_signature(&func) {
        Ok(by_ref) => by_ref,
        Err(e) => {
            errors.push(e);
            return errors.emit(func.into_token_stream());
        }
    };
    let flip = crate_path(krate.as_ref());
    let name = &func.sig.ident;
    let name_str = name.to_string();
    let arg = if by_ref { quote!(&ctx) } else { quote!(ctx) };
    let call = if func.sig.asyncness.is_some() {
        quote!(#name(#arg).await)
    } else {
        quote!(#name(#arg))
    };
    // Spanned on the return type, so that an error type flip cannot take is reported there.
    let convert = quote_spanned! {func.sig.output.span()=>
        #flip::__rt::StarterResult::into_starter_result(#call)
    };
    errors.emit(quote! {
        #func

        const _: () = {
            fn start(ctx: #flip::StartContext) -> #flip::BoxFuture<::core::result::Result<(), #flip::BoxError>> {
                ::std::boxed::Box::pin(async move { #convert })
            }
            #flip::__rt::inventory::submit! {
                #flip::__rt::StarterEntry {
                    name: #name_str,
                    module: ::core::module_path!(),
                    line: ::core::line!(),
                    start,
                }
            }
        };
    })
}

fn is_context(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "StartContext"))
}

/// Checks the signature; returns whether the context is taken by reference.
fn check_signature(func: &ItemFn) -> syn::Result<bool> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            format!("a starter cannot be generic; {ALLOWED_FORMS}"),
        ));
    }
    let mut inputs = sig.inputs.iter();
    let by_ref = match inputs.next() {
        None => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                format!("a starter takes one argument; {ALLOWED_FORMS}"),
            ));
        }
        Some(FnArg::Receiver(r)) => {
            return Err(syn::Error::new_spanned(
                r,
                format!("a starter cannot take `self`; {ALLOWED_FORMS}"),
            ));
        }
        Some(FnArg::Typed(t)) => match &*t.ty {
            Type::Reference(r) if r.mutability.is_none() && is_context(&r.elem) => true,
            ty if is_context(ty) => false,
            ty => {
                return Err(syn::Error::new_spanned(
                    ty,
                    format!("a starter's argument is the start context; {ALLOWED_FORMS}"),
                ));
            }
        },
    };
    if let Some(extra) = inputs.next() {
        return Err(syn::Error::new_spanned(
            extra,
            format!("a starter takes one argument; {ALLOWED_FORMS}"),
        ));
    }
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new_spanned(
            &sig.ident,
            format!(
                "a starter returns `Result<(), E>` so that setup errors abort the start; {ALLOWED_FORMS}"
            ),
        ));
    }
    Ok(by_ref)
}
