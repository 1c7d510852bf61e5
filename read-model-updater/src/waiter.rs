//! Consistency tokens: wait, bounded, until a view has applied an aggregate's version.

use std::sync::Arc;
use std::time::Duration;

use kiroku_journal::StreamId;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::{ReadStore, StoreError};
use crate::updater::Progress;

/// The outcome of a consistency wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The view has applied the version (it shows `applied`).
    Reached { applied: u64 },
    /// The deadline passed first; the view is at `applied`.
    NotYet { applied: u64 },
}

/// Waits for views to reach a version. In the updater's process it is woken by each commit;
/// elsewhere it polls the store.
#[derive(Clone)]
pub struct ConsistencyWaiter {
    store: Arc<dyn ReadStore>,
    projection: String,
    commits: Option<watch::Receiver<Progress>>,
    poll: Duration,
}

impl ConsistencyWaiter {
    pub fn new(
        store: Arc<dyn ReadStore>,
        projection: &str,
        commits: Option<watch::Receiver<Progress>>,
    ) -> Self {
        Self {
            store,
            projection: projection.to_owned(),
            commits,
            poll: Duration::from_millis(10),
        }
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
            if let Some(c) = commits.as_mut() {
                c.borrow_and_update();
            }
            let applied = self
                .store
                .applied_sequence(&self.projection, stream)
                .await?;
            if applied >= version {
                return Ok(Consistency::Reached { applied });
            }
            if Instant::now() >= deadline {
                return Ok(Consistency::NotYet { applied });
            }
            let wake = deadline.min(Instant::now() + self.poll);
            match commits.as_mut() {
                // Woken by the next commit; the poll bound covers a commit of another process.
                Some(c) => {
                    let _ = tokio::time::timeout_at(wake, c.changed()).await;
                }
                None => tokio::time::sleep_until(wake).await,
            }
        }
    }
}
