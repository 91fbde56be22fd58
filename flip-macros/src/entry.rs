//! `#[flip::main]`: parses its arguments, checks the function, and expands to a `main` that
//! hands everything to `flip::__rt::run`. On error the function is still emitted, so IDEs keep
//! working, with the errors on the offending spans.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, FnArg, ItemFn, Lit, LitStr, Meta, Token, Type};

const ALLOWED_ARGS: &str = "the arguments of #[flip::main] are pidfile = \"/run/app.pid\", \
                            env_prefix = \"APP\", grace = \"30s\", upgrade_timeout = \"10s\" \
                            and standby = true";
const ALLOWED_FORMS: &str = "#[flip::main] takes `fn main()` or `fn main(bootstrap: &mut flip::Bootstrap)`, \
                             each also as `async fn`, returning `()` or `Result<(), E>`";

#[derive(Default)]
struct Args {
    pidfile: Option<LitStr>,
    env_prefix: Option<LitStr>,
    grace: Option<u64>,
    upgrade_timeout: Option<u64>,
    standby: Option<bool>,
}

struct Form {
    is_async: bool,
    takes_bootstrap: bool,
}

pub(crate) fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => return with_error(item, e),
    };
    let args = parse_args(args);
    let form = check_signature(&func);
    match (args, form) {
        (Ok(args), Ok(form)) => expand(args, form, func),
        (Err(mut a), Err(f)) => {
            a.combine(f);
            with_error(func.into_token_stream(), a)
        }
        (Err(e), _) | (_, Err(e)) => with_error(func.into_token_stream(), e),
    }
}

pub(crate) fn with_error(mut tokens: TokenStream, error: syn::Error) -> TokenStream {
    tokens.extend(error.into_compile_error());
    tokens
}

fn bool_value(expr: &Expr, name: &str) -> syn::Result<bool> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{name}` takes `true` or `false`, as in {name} = true; {ALLOWED_ARGS}"),
        )),
    }
}

fn string_value(expr: &Expr, name: &str) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{name}` takes a string literal, as in {name} = \"...\"; {ALLOWED_ARGS}"),
        )),
    }
}

/// `"30s"`, `"1500ms"`, `"2m"`, `"1h"` in milliseconds.
fn duration_ms(lit: &LitStr, name: &str) -> syn::Result<u64> {
    let text = lit.value();
    let bad = || {
        syn::Error::new_spanned(
            lit,
            format!(
                "`{name}` must be a duration such as \"1500ms\", \"30s\", \"2m\" or \"1h\", not {text:?}"
            ),
        )
    };
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(digits_end);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

fn parse_args(args: TokenStream) -> syn::Result<Args> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    let mut out = Args::default();
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    for meta in metas {
        let Meta::NameValue(nv) = &meta else {
            push(syn::Error::new_spanned(
                &meta,
                format!("expected `name = \"value\"`; {ALLOWED_ARGS}"),
            ));
            continue;
        };
        let name = nv
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        let duplicate = || {
            syn::Error::new_spanned(&nv.path, format!("`{name}` is given twice; {ALLOWED_ARGS}"))
        };
        let result: syn::Result<()> = (|| {
            match name.as_str() {
                "pidfile" => {
                    if out.pidfile.is_some() {
                        return Err(duplicate());
                    }
                    let s = string_value(&nv.value, &name)?;
                    if s.value().is_empty() {
                        return Err(syn::Error::new_spanned(&s, "`pidfile` must not be empty"));
                    }
                    out.pidfile = Some(s);
                }
                "env_prefix" => {
                    if out.env_prefix.is_some() {
                        return Err(duplicate());
                    }
                    let s = string_value(&nv.value, &name)?;
                    let v = s.value();
                    if v.is_empty()
                        || !v
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    {
                        return Err(syn::Error::new_spanned(
                            &s,
                            "`env_prefix` must be upper-case letters, digits and `_`, such as \"APP\"",
                        ));
                    }
                    out.env_prefix = Some(s);
                }
                "grace" => {
                    if out.grace.is_some() {
                        return Err(duplicate());
                    }
                    out.grace = Some(duration_ms(&string_value(&nv.value, &name)?, &name)?);
                }
                "upgrade_timeout" => {
                    if out.upgrade_timeout.is_some() {
                        return Err(duplicate());
                    }
                    let s = string_value(&nv.value, &name)?;
                    let ms = duration_ms(&s, &name)?;
                    if ms == 0 {
                        return Err(syn::Error::new_spanned(
                            &s,
                            "`upgrade_timeout` must be longer than zero",
                        ));
                    }
                    out.upgrade_timeout = Some(ms);
                }
                "standby" => {
                    if out.standby.is_some() {
                        return Err(duplicate());
                    }
                    out.standby = Some(bool_value(&nv.value, &name)?);
                }
                _ => {
                    return Err(syn::Error::new_spanned(
                        &nv.path,
                        format!(
                            "unknown argument `{}`; {ALLOWED_ARGS}",
                            nv.path.to_token_stream()
                        ),
                    ));
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            push(e);
        }
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Whether `ty` is `&mut Bootstrap` (any path ending in `Bootstrap`).
fn is_bootstrap_ref(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) if r.mutability.is_some() => matches!(
            &*r.elem,
            Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Bootstrap")
        ),
        _ => false,
    }
}

fn check_signature(func: &ItemFn) -> syn::Result<Form> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            format!("#[flip::main] cannot be used on a generic function; {ALLOWED_FORMS}"),
        ));
    }
    let mut inputs = sig.inputs.iter();
    let takes_bootstrap = match inputs.next() {
        None => false,
        Some(FnArg::Receiver(r)) => {
            return Err(syn::Error::new_spanned(
                r,
                format!("#[flip::main] cannot take `self`; {ALLOWED_FORMS}"),
            ));
        }
        Some(FnArg::Typed(t)) if is_bootstrap_ref(&t.ty) => true,
        Some(FnArg::Typed(t)) => {
            return Err(syn::Error::new_spanned(
                &t.ty,
                format!("#[flip::main] cannot pass this argument; {ALLOWED_FORMS}"),
            ));
        }
    };
    if let Some(extra) = inputs.next() {
        return Err(syn::Error::new_spanned(
            extra,
            format!("#[flip::main] passes at most one argument; {ALLOWED_FORMS}"),
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new_spanned(v, ALLOWED_FORMS));
    }
    Ok(Form {
        is_async: sig.asyncness.is_some(),
        takes_bootstrap,
    })
}

fn expand(args: Args, form: Form, func: ItemFn) -> TokenStream {
    let outer_attrs = &func.attrs;
    let vis = &func.vis;
    let name = &func.sig.ident;
    let mut inner = func.clone();
    inner.attrs.clear();
    inner.vis = syn::Visibility::Inherited;
    inner.sig.ident = format_ident!("__flip_main");

    let pid_file = match &args.pidfile {
        Some(p) => quote!(::core::option::Option::Some(#p)),
        None => quote!(::core::option::Option::None),
    };
    let prefix = args
        .env_prefix
        .unwrap_or_else(|| LitStr::new("FLIP", Span::call_site()));
    let millis = |ms: Option<u64>| match ms {
        Some(ms) => quote!(::core::option::Option::Some(::std::time::Duration::from_millis(#ms))),
        None => quote!(::core::option::Option::None),
    };
    let grace = millis(args.grace);
    let upgrade_timeout = millis(args.upgrade_timeout);
    let standby = args.standby.unwrap_or(false);
    let (param, call) = if form.takes_bootstrap {
        (quote!(bootstrap), quote!(__flip_main(bootstrap)))
    } else {
        (quote!(_bootstrap), quote!(__flip_main()))
    };
    let call = if form.is_async {
        quote!(#call.await)
    } else {
        call
    };
    quote! {
        #(#outer_attrs)*
        #vis fn #name() -> ::std::process::ExitCode {
            #inner
            ::flip::__rt::run(
                ::flip::__rt::MainConfig {
                    pid_file: #pid_file,
                    env_prefix: #prefix,
                    grace: #grace,
                    upgrade_timeout: #upgrade_timeout,
                    standby: #standby,
                },
                |#param| ::std::boxed::Box::pin(async move {
                    ::flip::__rt::MainResult::into_main_result(#call)
                }),
            )
        }
    }
}
