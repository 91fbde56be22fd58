//! The one lock helper.

/// Locks a mutex, poisoned or not: every critical section in flip is a plain assignment, insert
/// or remove, so a panic inside one cannot leave the data half-updated.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
