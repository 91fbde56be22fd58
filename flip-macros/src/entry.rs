//! `#[flip::main]`: parses its arguments, checks the function, and expands to a `main` that
//! hands everything to `flip::__rt::run`.
//!
//! Errors are gathered, each on the offending span. With a bad argument the function still
//! expands as usual with the default of that argument, and with a bad signature the body is kept
//! inside a plain `fn main()`: IDEs keep working, and rustc adds no error of its own on top of
//! ours.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, FnArg, ItemFn, Lit, LitStr, Meta, MetaNameValue, Path, Token, Type};

const ALLOWED_ARGS: &str = "the arguments of #[flip::main] are pidfile = \"/run/app.pid\", \
                            env_prefix = \"APP\", grace = \"30s\", upgrade_timeout = \"10s\", \
                            probation = \"10s\", standby = true, supervise = true, control = \"/run/app.ctl\", \
                            stop = \"drain\" and crate = \"path::to::flip\"";
const ALLOWED_FORMS: &str = "#[flip::main] takes `fn main()` or `fn main(bootstrap: &mut flip::Bootstrap)`, \
                             each also as `async fn`, returning `()` or `Result<(), E>`";

/// Errors gathered along the way, reported together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    /// Appends the errors to `tokens`.
    pub(crate) fn emit(self, mut tokens: TokenStream) -> TokenStream {
        if let Some(e) = self.0 {
            tokens.extend(e.into_compile_error());
        }
        tokens
    }
}

#[derive(Default)]
struct Args {
    pidfile: Option<LitStr>,
    env_prefix: Option<LitStr>,
    grace: Option<u64>,
    upgrade_timeout: Option<u64>,
    probation: Option<u64>,
    standby: Option<bool>,
    supervise: Option<bool>,
    control: Option<LitStr>,
    stop: Option<bool>,
    krate: Option<Path>,
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
    let mut errors = Errors::default();
    let args = parse_args(args, &mut errors);
    match check_signature(&func) {
        Ok(form) => errors.emit(expand(&args, &form, func)),
        Err(e) => {
            errors.push(e);
            errors.emit(keep_body(func))
        }
    }
}

pub(crate) fn with_error(mut tokens: TokenStream, error: syn::Error) -> TokenStream {
    tokens.extend(error.into_compile_error());
    tokens
}

/// The path of the flip crate in the expansion: `::flip`, or what `crate = "..."` says (for a
/// crate that re-exports flip).
pub(crate) fn crate_path(krate: Option<&Path>) -> TokenStream {
    match krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::flip),
    }
}

/// Parses `crate = "path"`.
/// `crate = "..."`; `allowed` says which arguments the attribute takes, for the error.
/// The arguments of an attribute whose one argument is `crate = "path::to::flip"` (starters,
/// health checks): anything else, or a second `crate`, is an error listing `allowed`.
pub(crate) fn parse_crate_only(
    args: TokenStream,
    allowed: &str,
    errors: &mut Errors,
) -> Option<Path> {
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
        Ok(metas) => metas,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let mut krate = None;
    for meta in metas {
        match &meta {
            Meta::NameValue(nv) if nv.path.is_ident("crate") && krate.is_none() => {
                match parse_crate(&nv.value, allowed) {
                    Ok(path) => krate = Some(path),
                    Err(e) => errors.push(e),
                }
            }
            _ => errors.push(syn::Error::new_spanned(&meta, allowed)),
        }
    }
    krate
}

pub(crate) fn parse_crate(value: &Expr, allowed: &str) -> syn::Result<Path> {
    let lit = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => s.clone(),
        other => {
            return Err(syn::Error::new_spanned(
                other,
                format!("`crate` takes a string literal, as in crate = \"...\"; {allowed}"),
            ));
        }
    };
    lit.parse::<Path>().map_err(|_| {
        syn::Error::new_spanned(
            &lit,
            "`crate` takes the path of the flip crate, such as \"::my_framework::flip\"",
        )
    })
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

fn pidfile(value: &Expr) -> syn::Result<LitStr> {
    let s = string_value(value, "pidfile")?;
    if s.value().is_empty() {
        return Err(syn::Error::new_spanned(&s, "`pidfile` must not be empty"));
    }
    Ok(s)
}

fn env_prefix(value: &Expr) -> syn::Result<LitStr> {
    let s = string_value(value, "env_prefix")?;
    let v = s.value();
    let fits = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    if v.is_empty() || !v.chars().all(fits) {
        return Err(syn::Error::new_spanned(
            &s,
            "`env_prefix` must be upper-case letters, digits and `_`, such as \"APP\"",
        ));
    }
    Ok(s)
}

fn control(value: &Expr) -> syn::Result<LitStr> {
    let s = string_value(value, "control")?;
    let v = s.value();
    if !(v.is_empty() || v == "off" || v.starts_with('/')) {
        return Err(syn::Error::new_spanned(
            &s,
            "`control` takes an absolute path for the control socket, or \"off\"",
        ));
    }
    Ok(s)
}

/// `stop = "drain"` (true) or `"immediate"` (false).
fn stop(value: &Expr) -> syn::Result<bool> {
    let s = string_value(value, "stop")?;
    match s.value().as_str() {
        "drain" => Ok(true),
        "immediate" => Ok(false),
        other => Err(syn::Error::new_spanned(
            &s,
            format!("`stop` takes \"drain\" or \"immediate\", not {other:?}"),
        )),
    }
}

fn grace(value: &Expr) -> syn::Result<u64> {
    duration_ms(&string_value(value, "grace")?, "grace")
}

fn upgrade_timeout(value: &Expr) -> syn::Result<u64> {
    let s = string_value(value, "upgrade_timeout")?;
    match duration_ms(&s, "upgrade_timeout")? {
        0 => Err(syn::Error::new_spanned(
            &s,
            "`upgrade_timeout` must be longer than zero",
        )),
        ms => Ok(ms),
    }
}

/// Stores what `parse` makes of the argument's value in `slot`, once: a second occurrence, or
/// a value that does not parse, is an error and leaves the slot as it was.
fn set_once<T>(
    slot: &mut Option<T>,
    nv: &MetaNameValue,
    name: &str,
    parse: impl FnOnce(&Expr) -> syn::Result<T>,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new_spanned(
            &nv.path,
            format!("`{name}` is given twice; {ALLOWED_ARGS}"),
        ));
    }
    *slot = Some(parse(&nv.value)?);
    Ok(())
}

fn parse_args(args: TokenStream, errors: &mut Errors) -> Args {
    let mut out = Args::default();
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
        Ok(metas) => metas,
        Err(e) => {
            errors.push(e);
            return out;
        }
    };
    for meta in metas {
        let Meta::NameValue(nv) = &meta else {
            errors.push(syn::Error::new_spanned(
                &meta,
                format!("expected `name = \"value\"`; {ALLOWED_ARGS}"),
            ));
            continue;
        };
        let name = nv.path.to_token_stream().to_string();
        let result = match name.as_str() {
            "pidfile" => set_once(&mut out.pidfile, nv, &name, pidfile),
            "env_prefix" => set_once(&mut out.env_prefix, nv, &name, env_prefix),
            "grace" => set_once(&mut out.grace, nv, &name, grace),
            "upgrade_timeout" => set_once(&mut out.upgrade_timeout, nv, &name, upgrade_timeout),
            "probation" => set_once(&mut out.probation, nv, &name, |v| {
                duration_ms(&string_value(v, "probation")?, "probation")
            }),
            "standby" => set_once(&mut out.standby, nv, &name, |v| bool_value(v, "standby")),
            "supervise" => set_once(&mut out.supervise, nv, &name, |v| {
                bool_value(v, "supervise")
            }),
            "control" => set_once(&mut out.control, nv, &name, control),
            "stop" => set_once(&mut out.stop, nv, &name, stop),
            "crate" => set_once(&mut out.krate, nv, &name, |v| parse_crate(v, ALLOWED_ARGS)),
            _ => Err(syn::Error::new_spanned(
                &nv.path,
                format!("unknown argument `{name}`; {ALLOWED_ARGS}"),
            )),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    out
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

/// For a signature flip cannot run: a plain `fn main()` that holds the function (without a
/// `self` it cannot have), so its body is still checked and rustc has no `main` to object to.
fn keep_body(func: ItemFn) -> TokenStream {
    let outer_attrs = &func.attrs;
    let vis = &func.vis;
    let name = &func.sig.ident;
    let mut inner = inner_fn(&func);
    inner.sig.inputs = inner
        .sig
        .inputs
        .into_iter()
        .filter(|arg| matches!(arg, FnArg::Typed(_)))
        .collect();
    quote! {
        #(#outer_attrs)*
        #vis fn #name() {
            #[allow(dead_code, unused)]
            #inner
        }
    }
}

/// The user's function as the body of the generated `main`: private, without the attributes
/// (they go on `main`), named `__flip_main`.
fn inner_fn(func: &ItemFn) -> ItemFn {
    let mut inner = func.clone();
    inner.attrs.clear();
    inner.vis = syn::Visibility::Inherited;
    inner.sig.ident = format_ident!("__flip_main");
    inner
}

fn expand(args: &Args, form: &Form, func: ItemFn) -> TokenStream {
    let flip = crate_path(args.krate.as_ref());
    let outer_attrs = &func.attrs;
    let vis = &func.vis;
    let name = &func.sig.ident;
    let inner = inner_fn(&func);

    let pid_file = match &args.pidfile {
        Some(p) => quote!(::core::option::Option::Some(#p)),
        None => quote!(::core::option::Option::None),
    };
    let prefix = args
        .env_prefix
        .clone()
        .unwrap_or_else(|| LitStr::new("FLIP", Span::call_site()));
    let millis = |ms: Option<u64>| match ms {
        Some(ms) => quote!(::core::option::Option::Some(::std::time::Duration::from_millis(#ms))),
        None => quote!(::core::option::Option::None),
    };
    let grace = millis(args.grace);
    let upgrade_timeout = millis(args.upgrade_timeout);
    let probation = millis(args.probation);
    let standby = args.standby.unwrap_or(true);
    let control = match &args.control {
        Some(c) => quote!(::core::option::Option::Some(#c)),
        None => quote!(::core::option::Option::None),
    };
    let supervise = match args.supervise {
        Some(b) => quote!(::core::option::Option::Some(#b)),
        None => quote!(::core::option::Option::None),
    };
    let stop = match args.stop {
        Some(true) => quote!(::core::option::Option::Some(#flip::StopMode::Drain)),
        Some(false) => quote!(::core::option::Option::Some(#flip::StopMode::Immediate)),
        None => quote!(::core::option::Option::None),
    };
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
    // Spanned on the return type, so that an error type flip cannot take is reported there.
    let convert = quote_spanned! {func.sig.output.span()=>
        #flip::__rt::MainResult::into_main_result(#call)
    };
    quote! {
        #(#outer_attrs)*
        #vis fn #name() -> ::std::process::ExitCode {
            #inner
            #flip::__rt::run(
                #flip::__rt::MainConfig {
                    pid_file: #pid_file,
                    env_prefix: #prefix,
                    grace: #grace,
                    upgrade_timeout: #upgrade_timeout,
                    probation: #probation,
                    standby: #standby,
                    supervise: #supervise,
                    control: #control,
                    stop: #stop,
                },
                |#param| ::std::boxed::Box::pin(async move { #convert }),
            )
        }
    }
}
