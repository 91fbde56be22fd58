//! The one lock helper, and the boxed future of flip's object-safe traits.

/// Locks a mutex, poisoned or not: every critical section in flip is a plain assignment, insert
/// or remove, so a panic inside one cannot leave the data half-updated.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A boxed future that may borrow for `'a`: what a trait method of flip returns in place of an
/// `async fn`, so that the trait stays usable as `dyn`.
pub(crate) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
