//! The drain group: the serving tasks of [`StartContext::serve`](super::StartContext::serve),
//! which the graceful stop waits for.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The serving tasks, shared by the [`Bootstrap`](super::Bootstrap) and every
/// [`StartContext`](super::StartContext).
#[derive(Clone, Default)]
pub(super) struct DrainGroup(Arc<Mutex<Group>>);

#[derive(Default)]
struct Group {
    tasks: JoinSet<()>,
    /// Tasks given while a starter runs, spawned once its poll returns (see
    /// [`DrainGroup::batched`]).
    held: Option<Vec<Task>>,
}

impl DrainGroup {
    /// Runs `task` in the group.
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut group = crate::sync::lock(&self.0);
        match &mut group.held {
            Some(held) => held.push(Box::pin(task)),
            None => {
                group.tasks.spawn(task);
            }
        }
    }

    /// Takes every task of the group, leaving it empty: for the drain to wait on.
    pub(super) fn take(&self) -> JoinSet<()> {
        std::mem::take(&mut crate::sync::lock(&self.0).tasks)
    }

    /// Polls a starter, and spawns the tasks it gives the group each time its poll returns
    /// rather than one at a time.
    ///
    /// Spawning from outside the runtime's workers wakes a parked worker each time; a server
    /// with a thousand listeners would pay a thousand wake-ups on the way to ready. Together,
    /// the first spawn wakes the workers and the others find them awake. A task still starts
    /// before the starter waits on anything, so the starter cannot tell the difference.
    pub(super) async fn batched<F: Future>(&self, starter: F) -> F::Output {
        let mut starter = std::pin::pin!(starter);
        std::future::poll_fn(|cx| {
            let _release = Hold::new(self);
            starter.as_mut().poll(cx)
        })
        .await
    }
}

/// Holds the group's new tasks while it lives, and spawns them when dropped (after a poll, or
/// when the poll panicked).
struct Hold<'a>(&'a DrainGroup);

impl<'a> Hold<'a> {
    fn new(group: &'a DrainGroup) -> Hold<'a> {
        crate::sync::lock(&group.0)
            .held
            .get_or_insert_with(Vec::new);
        Hold(group)
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut group = crate::sync::lock(&self.0.0);
        for task in group.held.take().unwrap_or_default() {
            group.tasks.spawn(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_task_starts_before_the_starter_waits() {
        let group = DrainGroup::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = group.clone();
        let got = group
            .batched(async move {
                inner.spawn(async move {
                    let _ = tx.send(7);
                });
                // Held until this poll returns: waiting here lets the task run.
                rx.await
            })
            .await;
        assert_eq!(got.ok(), Some(7));
        // Outside a starter a task is spawned at once.
        let (tx, rx) = tokio::sync::oneshot::channel();
        group.spawn(async move {
            let _ = tx.send(8);
        });
        assert_eq!(rx.await.ok(), Some(8));
        assert_eq!(group.take().len(), 2);
    }
}
