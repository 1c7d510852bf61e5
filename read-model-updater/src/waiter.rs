//! Consistency tokens: wait, bounded, until a view has applied an aggregate's version.

use std::sync::Arc;
use std::time::Duration;

use kiroku_journal::StreamId;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::{ReadStore, StoreError};
use crate::updater::Progress;

/// How often a wait looks at the store when no updater in this process tells it about commits.
const DEFAULT_WAIT_POLL: Duration = Duration::from_millis(50);
/// Beside an updater, a wait still looks now and then without a commit: a rebuild run by another
/// process may switch the active version under it.
const LOOK_AROUND: Duration = Duration::from_secs(1);

/// The outcome of a consistency wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The view has applied the version (it shows `applied`).
    Reached { applied: u64 },
    /// The deadline passed first; the view is at `applied`.
    NotYet { applied: u64 },
}

/// Waits for views to reach a version. In the updater's process a wait reads the store once per
/// commit the updater publishes (and once a second besides); elsewhere it polls the store.
#[derive(Clone)]
pub struct ConsistencyWaiter {
    store: Arc<dyn ReadStore>,
    projection: String,
    commits: Option<watch::Receiver<Progress>>,
    poll: Duration,
}

impl ConsistencyWaiter {
    /// `commits`: the progress of the updater in this process, if one runs here.
    pub fn new(
        store: Arc<dyn ReadStore>,
        projection: &str,
        commits: Option<watch::Receiver<Progress>>,
    ) -> Self {
        Self {
            store,
            projection: projection.to_owned(),
            commits,
            poll: DEFAULT_WAIT_POLL,
        }
    }

    /// How often to poll when there is no updater here (or it stopped).
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// The view's applied version of `stream` right now, without waiting.
    pub async fn applied(&self, stream: &StreamId) -> Result<u64, StoreError> {
        self.store.applied_sequence(&self.projection, stream).await
    }

    pub async fn wait_for(
        &self,
        stream: &StreamId,
        version: u64,
        timeout: Duration,
    ) -> Result<Consistency, StoreError> {
        let deadline = Instant::now() + timeout;
        let mut commits = self.commits.clone();
        loop {
            // Marked seen before the read: a commit after it wakes the next wait.
            if let Some(c) = commits.as_mut() {
                c.borrow_and_update();
            }
            let applied = self.applied(stream).await?;
            if applied >= version {
                return Ok(Consistency::Reached { applied });
            }
            if Instant::now() >= deadline {
                return Ok(Consistency::NotYet { applied });
            }
            match commits.as_mut() {
                Some(c) => {
                    let wake = deadline.min(Instant::now() + LOOK_AROUND);
                    if let Ok(Err(_)) = tokio::time::timeout_at(wake, c.changed()).await {
                        // The updater is gone (stopped, or being restarted): poll from now on
                        // rather than spin on a closed channel.
                        commits = None;
                    }
                }
                None => tokio::time::sleep_until(deadline.min(Instant::now() + self.poll)).await,
            }
        }
    }
}
