//! Feeds: the journal's events in a resumable order.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiroku_journal::{Envelope, Journal, JournalError};
use tokio::sync::watch;

/// A source of envelopes in a resumable order: `position` is opaque to the updater except that
/// it grows, and every event after a position comes out again when resumed from it.
#[async_trait]
pub trait Feed: Send + Sync + 'static {
    /// Up to `max` events after `position`, in order. Waits up to `wait` for the first one and
    /// returns an empty batch if none came.
    async fn next(
        &self,
        position: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Envelope>, JournalError>;

    /// The newest position the feed has (for lag), if it knows.
    async fn head(&self) -> Result<Option<u64>, JournalError>;
}

/// Tails a journal's global order. In the process that writes the journal it is woken by the
/// writer's commit notifications ([`kiroku_journal::SqliteJournal::committed_position`]); in
/// another process it polls at `poll`.
pub struct JournalFeed {
    journal: Arc<dyn Journal>,
    committed: Option<watch::Receiver<u64>>,
    poll: Duration,
}

impl JournalFeed {
    pub fn new(journal: Arc<dyn Journal>, committed: Option<watch::Receiver<u64>>) -> Self {
        Self {
            journal,
            committed,
            poll: Duration::from_millis(20),
        }
    }

    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }
}

#[async_trait]
impl Feed for JournalFeed {
    async fn next(
        &self,
        position: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Envelope>, JournalError> {
        if !self.journal.has_global_order() {
            return Err(JournalError::Unsupported("a global order to tail"));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut committed = self.committed.clone();
        loop {
            // In-process the watch says whether there is anything to read at all.
            let worth_reading = committed.as_ref().is_none_or(|c| *c.borrow() > position);
            if worth_reading {
                let events = self.journal.read_all(position, max).await?;
                if !events.is_empty() {
                    return Ok(events);
                }
            }
            let woken = match committed.as_mut() {
                Some(c) => tokio::time::timeout_at(deadline, c.wait_for(|p| *p > position))
                    .await
                    .is_ok(),
                None => {
                    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + self.poll))
                        .await;
                    tokio::time::Instant::now() < deadline
                }
            };
            if !woken {
                return Ok(Vec::new());
            }
        }
    }

    async fn head(&self) -> Result<Option<u64>, JournalError> {
        if let Some(c) = &self.committed {
            return Ok(Some(*c.borrow()));
        }
        self.journal.head_position().await
    }
}
