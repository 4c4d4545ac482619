//! Owned background tasks: each has a name (in logs), stops when the shared cancellation
//! token fires, and is aborted if it has not stopped by the shutdown deadline.
//!
//! A task must never be spawned with a bare `tokio::spawn` outside this module (tests
//! excepted): that is how tasks get orphaned.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The set of background tasks the application owns.
pub struct Tasks {
    cancel: CancellationToken,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Tasks {
    pub fn new() -> Self {
        Self {
            cancel: CancellationToken::new(),
            running: Vec::new(),
        }
    }

    /// The token every task watches; cancelled by [`Tasks::shutdown`].
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Spawns `make(token)` as the task `name`. The task should return soon after the
    /// token is cancelled; it is aborted otherwise.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, make: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let future = make(self.cancel.clone());
        let handle = tokio::spawn(async move {
            tracing::debug!(task = name, "task started");
            future.await;
            tracing::debug!(task = name, "task finished");
        });
        self.running.push((name, handle));
    }

    /// Cancels every task and waits for them, up to `deadline` in all; aborts the rest.
    pub async fn shutdown(mut self, deadline: Duration) {
        self.cancel.cancel();
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut handle) in std::mem::take(&mut self.running) {
            match tokio::time::timeout_at(until, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => tracing::error!(task = name, "task panicked"),
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(task = name, "task did not stop in time; aborting it");
                    handle.abort();
                }
            }
        }
    }
}

/// Dropping the owner without [`Tasks::shutdown`] (its future was dropped or aborted)
/// still stops every task: none outlives the application that started it.
impl Drop for Tasks {
    fn drop(&mut self) {
        self.cancel.cancel();
        for (_, handle) in &self.running {
            handle.abort();
        }
    }
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_owner_stops_its_tasks() {
        let (alive, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut tasks = Tasks::new();
        // Ignores its token: only the abort can stop it.
        tasks.spawn("forever", move |_cancel| async move {
            let _alive = alive;
            std::future::pending::<()>().await;
        });
        drop(tasks);
        let result = tokio::time::timeout(Duration::from_secs(1), stopped).await;
        assert!(matches!(result, Ok(Err(_))), "the task outlived its owner");
    }
}
