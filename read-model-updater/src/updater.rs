//! The updater: runs a projection over a feed, one store transaction per batch.
//!
//! It never stops on its own. A transient fault (the store's connection lost, a lost race, a busy
//! store) is retried with jittered, bounded backoff; any other failure, or a panic, restarts it
//! from the store's state after a longer backoff. Each failure is logged, counted and published
//! in [`UpdaterHealth`] until the next attempt that succeeds.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kiroku_journal::{Envelope, Journal, JournalError, StreamId};
use tokio::sync::{broadcast, watch};

use crate::health::{UpdaterHealth, backoff};
use crate::store::{Batch, Poison, ProjectedEvent, ReadStore, StoreError};
use crate::{Feed, Projection};

#[derive(Debug, Clone)]
pub struct UpdaterConfig {
    /// Most events read and committed in one transaction.
    pub batch_size: usize,
    /// Tries of a failing projection (or store write) before the event is parked.
    pub max_attempts: u32,
    /// First pause between tries (of a projection, a refused batch, a transient fault);
    /// doubles each time.
    pub retry_backoff: Duration,
    /// Longest pause between tries after transient faults.
    pub max_retry_backoff: Duration,
    /// First pause before a restart after a failure that is not transient; doubles with each
    /// restart in a row.
    pub restart_backoff: Duration,
    /// Longest pause before a restart.
    pub max_restart_backoff: Duration,
    /// How long one wait for new events lasts before the updater looks around again (e.g. for a
    /// rebuild's switch).
    pub idle_wait: Duration,
}

impl Default for UpdaterConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(10),
            max_retry_backoff: Duration::from_secs(5),
            restart_backoff: Duration::from_secs(1),
            max_restart_backoff: Duration::from_secs(60),
            idle_wait: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpdaterError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where an updater is: published after every commit (consistency waits and lag read it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub version: u32,
    /// Feed position of the last committed batch.
    pub position: u64,
    /// Commit time of the newest applied event.
    pub last_event_ms: i64,
    /// Newest feed position known when the batch was read.
    pub head: u64,
    pub applied: u64,
    pub parked: u64,
}

impl Progress {
    pub fn lag_events(&self) -> u64 {
        self.head.saturating_sub(self.position)
    }

    /// Age of the newest applied event while events wait; 0 when caught up.
    pub fn lag_seconds(&self, now_ms: i64) -> f64 {
        if self.lag_events() == 0 || self.last_event_ms == 0 {
            0.0
        } else {
            (now_ms - self.last_event_ms).max(0) as f64 / 1000.0
        }
    }
}

/// Which version of the projection's tables the updater fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The active one, following switches made by rebuilds.
    Active,
    /// One fixed version (a rebuild's).
    Version(u32),
}

pub struct Updater {
    store: Arc<dyn ReadStore>,
    journal: Arc<dyn Journal>,
    feed: Arc<dyn Feed>,
    projection: Arc<dyn Projection>,
    config: UpdaterConfig,
    target: Target,
    progress: watch::Sender<Progress>,
    health: watch::Sender<UpdaterHealth>,
    changes: broadcast::Sender<Changed>,
    /// Highest sequence handled (applied or parked) per aggregate; a cache of the store's,
    /// updated only once a commit returned: never ahead of the store.
    handled: HashMap<StreamId, u64>,
    /// The version whose checkpoint the updater resumed from.
    loaded: Option<u32>,
}

const MAX_CACHED_STREAMS: usize = 200_000;
/// Commits a slow live subscriber may fall behind before it is told it lagged.
const CHANGES_BUFFER: usize = 1024;

/// The aggregates one commit changed, each with the newest sequence number the commit handled
/// (sorted by aggregate).
pub type Changed = Arc<Vec<(StreamId, u64)>>;

impl Updater {
    pub fn new(
        store: Arc<dyn ReadStore>,
        journal: Arc<dyn Journal>,
        feed: Arc<dyn Feed>,
        projection: Arc<dyn Projection>,
        config: UpdaterConfig,
    ) -> Self {
        Self {
            store,
            journal,
            feed,
            projection,
            config,
            target: Target::Active,
            progress: watch::channel(Progress::default()).0,
            health: watch::channel(UpdaterHealth::default()).0,
            changes: broadcast::channel(CHANGES_BUFFER).0,
            handled: HashMap::new(),
            loaded: None,
        }
    }

    /// Fills one fixed version instead of the active one (rebuilds).
    pub(crate) fn for_version(mut self, version: u32) -> Self {
        self.target = Target::Version(version);
        self
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Whether the updater can commit, and its failures (readiness, status, metrics).
    pub fn health(&self) -> watch::Receiver<UpdaterHealth> {
        self.health.subscribe()
    }

    /// The aggregates each commit touched, for live push: a subscriber wakes only for its own.
    /// One that lags behind gets `Lagged` and must look for itself.
    pub fn changes(&self) -> broadcast::Sender<Changed> {
        self.changes.clone()
    }

    /// Runs until `shutdown` completes. Never stops on its own: a transient fault is retried
    /// after a pause (bounded, jittered); any other failure, or a panic, restarts the updater
    /// from the store's state after a longer pause. Both are logged and published in
    /// [`Self::health`] until the next attempt that succeeds.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut restarts_in_a_row = 0u32;
        loop {
            let attempt = tokio::select! {
                biased;
                _ = &mut shutdown => return,
                attempt = AssertUnwindSafe(self.step()).catch_unwind() => attempt,
            };
            let pause = match attempt {
                Ok(Ok(_)) => {
                    restarts_in_a_row = 0;
                    if self.health.send_if_modified(UpdaterHealth::succeeded) {
                        tracing::info!("read-model updater: committing again");
                    }
                    continue;
                }
                Ok(Err(e)) if e.is_transient() => self.transient_fault(&e),
                Ok(Err(e)) => {
                    restarts_in_a_row += 1;
                    self.restart(e.summary(), &e, restarts_in_a_row)
                }
                Err(panic) => {
                    restarts_in_a_row += 1;
                    let message = panic_message(panic.as_ref());
                    self.restart(
                        "the read-model updater panicked",
                        &message,
                        restarts_in_a_row,
                    )
                }
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Counts a transient fault; returns the pause before trying again.
    fn transient_fault(&mut self, e: &UpdaterError) -> Duration {
        let mut failure = None;
        self.health
            .send_modify(|h| failure = Some(h.failed(true, e.summary())));
        let attempts = self.health.borrow().consecutive_failures;
        let pause = backoff(
            self.config.retry_backoff,
            attempts,
            self.config.max_retry_backoff,
        );
        let error_id = failure.map(|f| f.error_id).unwrap_or_default();
        tracing::warn!(%error_id, error = %e, attempts, ?pause, "read-model updater: transient fault, cannot commit; retrying");
        pause
    }

    /// Counts a failure that is not transient and forgets what the updater holds in memory, so
    /// that the next step starts over from the store; returns the pause before it.
    fn restart(&mut self, summary: &str, e: &dyn std::fmt::Display, in_a_row: u32) -> Duration {
        let mut failure = None;
        self.health
            .send_modify(|h| failure = Some(h.failed(false, summary)));
        self.handled.clear();
        self.loaded = None;
        let pause = backoff(
            self.config.restart_backoff,
            in_a_row,
            self.config.max_restart_backoff,
        );
        let error_id = failure.map(|f| f.error_id).unwrap_or_default();
        tracing::error!(%error_id, error = %e, restarts_in_a_row = in_a_row, ?pause, "read-model updater: failed; restarting from the store's state");
        pause
    }

    /// Reads, projects and commits one batch. Returns how many feed events it consumed (0 when
    /// none came within the idle wait).
    pub async fn step(&mut self) -> Result<usize, UpdaterError> {
        let (version, position) = self.resolve_target().await?;
        let head = self.feed.head().await?.unwrap_or(0);
        let events = self
            .feed
            .next(position, self.config.batch_size, self.config.idle_wait)
            .await?;
        let Some(last) = events.last() else {
            self.publish(version, position, head.max(position), 0, 0, None);
            return Ok(0);
        };
        let (end, last_event_ms) = (last.global_position, last.metadata.timestamp_ms);
        let consumed = events.len();
        let (ordered, pending) = self.in_order(version, events).await?;
        let projected: Vec<ProjectedEvent> = {
            let mut out = Vec::with_capacity(ordered.len());
            for envelope in ordered {
                let result = self.project(&envelope).await;
                out.push(ProjectedEvent { envelope, result });
            }
            out
        };
        // Each touched aggregate with the newest sequence number of it in this batch; only
        // worth building when somebody listens (not in a rebuild, nor without live push). A
        // subscriber arriving between this check and the send misses one announcement and
        // finds the change at its next bounded look (live.rs), never loses it.
        let touched = (self.changes.receiver_count() > 0).then(|| {
            let mut touched: Vec<(StreamId, u64)> = projected
                .iter()
                .map(|e| (e.envelope.stream.clone(), e.envelope.sequence))
                .collect();
            touched.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            touched.dedup_by(|later, first| later.0 == first.0);
            touched
        });
        let batch = Batch {
            projection: self.projection.name().to_owned(),
            version,
            events: projected,
            position: end,
            last_event_ms,
        };
        let (applied, parked) = self.commit(batch).await?;
        // Only now are these events handled: a commit that failed (or whose outcome is unknown)
        // is tried again with the same events, which the store skips if they were applied.
        self.handled.extend(pending);
        if let Some(touched) = touched {
            // A subscriber that left since is fine: the send only fails then.
            let _ = self.changes.send(Arc::new(touched));
        }
        self.publish(
            version,
            end,
            head.max(end),
            applied,
            parked,
            Some(last_event_ms),
        );
        Ok(consumed)
    }

    /// The version to fill and the feed position to resume from. Follows a rebuild's switch.
    async fn resolve_target(&mut self) -> Result<(u32, u64), UpdaterError> {
        let name = self.projection.name().to_owned();
        let version = match self.target {
            Target::Version(v) => v,
            Target::Active => self.store.state(&name).await?.active_version,
        };
        if self.loaded == Some(version) {
            return Ok((version, self.progress.borrow().position));
        }
        // First step, or the active version changed: resume from that version's checkpoint.
        let checkpoint = self.store.checkpoint(&name, version).await?;
        self.handled.clear();
        self.loaded = Some(version);
        self.progress.send_modify(|p| {
            p.version = version;
            p.position = checkpoint.position;
            p.last_event_ms = checkpoint.last_event_ms;
        });
        Ok((version, checkpoint.position))
    }

    /// Keeps the events this projection reads, drops what was handled already and fills gaps
    /// from the journal, so each aggregate's events are consecutive. Also returns the newest
    /// sequence of each aggregate in the batch: handled once the batch is committed.
    async fn in_order(
        &mut self,
        version: u32,
        events: Vec<Envelope>,
    ) -> Result<(Vec<Envelope>, HashMap<StreamId, u64>), UpdaterError> {
        let events: Vec<Envelope> = events
            .into_iter()
            .filter(|e| self.projection.reads(&e.stream.aggregate_type))
            .collect();
        let unknown: Vec<StreamId> = events
            .iter()
            .filter(|e| !self.handled.contains_key(&e.stream))
            .map(|e| e.stream.clone())
            .collect();
        if !unknown.is_empty() {
            if self.handled.len() + unknown.len() > MAX_CACHED_STREAMS {
                self.handled.clear();
            }
            let known = self
                .store
                .applied_sequences(self.projection.name(), version, &unknown)
                .await?;
            self.handled.extend(known);
        }
        let mut out = Vec::with_capacity(events.len());
        let mut pending: HashMap<StreamId, u64> = HashMap::new();
        for event in events {
            let handled = pending
                .get(&event.stream)
                .or_else(|| self.handled.get(&event.stream))
                .copied()
                .unwrap_or(0);
            if event.sequence <= handled {
                continue;
            }
            if event.sequence > handled + 1 {
                // A gap: read what is missing from the journal, in order.
                let missing = self
                    .journal
                    .read_stream(&event.stream, handled + 1, event.sequence - 1, usize::MAX)
                    .await?;
                tracing::info!(stream = %event.stream, from = handled + 1, to = event.sequence - 1, read = missing.len(), "read-model updater: repaired a gap from the journal");
                out.extend(missing);
            }
            pending.insert(event.stream.clone(), event.sequence);
            out.push(event);
        }
        Ok((out, pending))
    }

    /// Projects one event, retrying a failure with backoff before giving it up as poison. A
    /// panic of the projection is a failure like any other: its event is parked, the rest goes
    /// on.
    async fn project(&self, event: &Envelope) -> Result<Vec<crate::Change>, Poison> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let changes =
                std::panic::catch_unwind(AssertUnwindSafe(|| self.projection.changes(event)))
                    .unwrap_or_else(|panic| {
                        Err(format!(
                            "the projection panicked: {}",
                            panic_message(panic.as_ref())
                        ))
                    });
            match changes {
                Ok(changes) => return Ok(changes),
                Err(error) if attempts >= self.config.max_attempts => {
                    tracing::warn!(stream = %event.stream, sequence = event.sequence, %error, "read-model updater: parking a poison event");
                    return Err(Poison { error, attempts });
                }
                Err(_) => {
                    let pause = backoff(
                        self.config.retry_backoff,
                        attempts,
                        self.config.max_retry_backoff,
                    );
                    tokio::time::sleep(pause).await
                }
            }
        }
    }

    /// Commits a batch. A gap found by the store (the cache was stale) is repaired by reloading;
    /// a batch the store keeps refusing for what may be an event's data (a constraint, a value)
    /// is split so only the event at fault is parked. A failure of the store itself (transient,
    /// or a broken store: a table missing or of another shape, no permission, a read-only or
    /// full disk) parks nothing and is returned.
    async fn commit(&mut self, batch: Batch) -> Result<(u64, u64), UpdaterError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.store.commit(batch.clone()).await {
                Ok(outcome) => return Ok((outcome.applied as u64, outcome.parked as u64)),
                Err(StoreError::Gap { .. }) if attempts < 3 => {
                    // Start over from what the store says.
                    self.handled.clear();
                    let events = batch.events.into_iter().map(|p| p.envelope).collect();
                    // The events' sequences become handled in `step`, once this commit returns.
                    let (ordered, _) = self.in_order(batch.version, events).await?;
                    let mut events = Vec::with_capacity(ordered.len());
                    for envelope in ordered {
                        let result = self.project(&envelope).await;
                        events.push(ProjectedEvent { envelope, result });
                    }
                    return Box::pin(self.commit(Batch { events, ..batch })).await;
                }
                // The store itself failed (its connection, its tables, its disk, ...): no event
                // is at fault, so none is parked and the checkpoint stays; `run` retries or
                // restarts, and health says the updater cannot commit until the store is back.
                Err(e) if !e.may_be_an_events_fault() => return Err(e.into()),
                Err(e) if attempts < self.config.max_attempts => {
                    tracing::warn!(error = %e, "read-model updater: batch refused, trying again");
                    let pause = backoff(
                        self.config.retry_backoff,
                        attempts,
                        self.config.max_retry_backoff,
                    );
                    tokio::time::sleep(pause).await;
                }
                Err(e) if batch.events.len() > 1 => {
                    tracing::warn!(error = %e, "read-model updater: batch refused, committing event by event");
                    return self.commit_one_by_one(batch).await;
                }
                Err(e) => {
                    // One event the store refuses: park it with the store's error.
                    let mut batch = batch;
                    if let Some(event) = batch.events.first_mut() {
                        event.result = Err(Poison {
                            error: e.to_string(),
                            attempts,
                        });
                    }
                    let outcome = self.store.commit(batch).await?;
                    return Ok((outcome.applied as u64, outcome.parked as u64));
                }
            }
        }
    }

    async fn commit_one_by_one(&mut self, batch: Batch) -> Result<(u64, u64), UpdaterError> {
        let (mut applied, mut parked) = (0, 0);
        let n = batch.events.len();
        for (i, event) in batch.events.into_iter().enumerate() {
            let single = Batch {
                projection: batch.projection.clone(),
                version: batch.version,
                // The last one carries the batch's end (which may be past unread event types).
                position: if i + 1 == n {
                    batch.position
                } else {
                    event.envelope.global_position
                },
                last_event_ms: event.envelope.metadata.timestamp_ms,
                events: vec![event],
            };
            let (a, p) = Box::pin(self.commit(single)).await?;
            applied += a;
            parked += p;
        }
        Ok((applied, parked))
    }

    fn publish(
        &self,
        version: u32,
        position: u64,
        head: u64,
        applied: u64,
        parked: u64,
        last_event_ms: Option<i64>,
    ) {
        self.progress.send_if_modified(|p| {
            let before = *p;
            p.version = version;
            p.position = position;
            p.head = head;
            p.applied += applied;
            p.parked += parked;
            if let Some(ms) = last_event_ms {
                p.last_event_ms = ms;
            }
            *p != before
        });
    }
}

/// The text a panic carried, if any.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
