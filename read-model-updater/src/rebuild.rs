//! Rebuild: replay the journal into a fresh version of a projection's tables while the active
//! version keeps serving, then switch atomically.
//!
//! Resumable: the version being built and its checkpoint are in the store, so a rebuild started
//! again after a kill goes on where it stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiroku_journal::Journal;

use crate::updater::{Updater, UpdaterConfig, UpdaterError};
use crate::{JournalFeed, Projection, ReadStore};

#[derive(Debug, Clone, Copy)]
pub struct RebuildProgress {
    pub version: u32,
    pub position: u64,
    /// The journal's head when last looked at.
    pub head: u64,
    /// Events consumed by this run.
    pub events: u64,
    pub elapsed: Duration,
}

impl RebuildProgress {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Time left at the current rate.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.events_per_second();
        let left = self.head.saturating_sub(self.position);
        (rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate))
    }
}

/// Rebuilds `projection` and makes the new version active. Returns the final progress.
pub async fn rebuild(
    store: Arc<dyn ReadStore>,
    journal: Arc<dyn Journal>,
    projection: Arc<dyn Projection>,
    batch_size: usize,
    mut on_progress: impl FnMut(&RebuildProgress),
) -> Result<RebuildProgress, UpdaterError> {
    let name = projection.name().to_owned();
    let version = store.begin_rebuild(&name).await?;
    let feed = Arc::new(JournalFeed::new(journal.clone(), None));
    let config = UpdaterConfig {
        batch_size,
        idle_wait: Duration::ZERO,
        ..UpdaterConfig::default()
    };
    let mut updater =
        Updater::new(store.clone(), journal.clone(), feed, projection, config).for_version(version);
    let started = Instant::now();
    let mut progress = RebuildProgress {
        version,
        position: store.checkpoint(&name, version).await?.position,
        head: journal.head_position().await?.unwrap_or(0),
        events: 0,
        elapsed: Duration::ZERO,
    };
    let watch = updater.progress();
    loop {
        let consumed = updater.step().await? as u64;
        progress.events += consumed;
        progress.position = watch.borrow().position.max(progress.position);
        progress.elapsed = started.elapsed();
        if consumed == 0 {
            // Caught up with the journal as it was a moment ago: switch. Events committed since
            // are applied to the new version by the live updater, from its checkpoint.
            progress.head = journal.head_position().await?.unwrap_or(0);
            if progress.position >= progress.head {
                store.finish_rebuild(&name, version).await?;
                on_progress(&progress);
                return Ok(progress);
            }
            continue;
        }
        if progress.position >= progress.head {
            progress.head = journal.head_position().await?.unwrap_or(0);
        }
        on_progress(&progress);
    }
}
