//! The updater: runs a projection over a feed, one store transaction per batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiroku_journal::{Envelope, Journal, JournalError, StreamId};
use tokio::sync::{broadcast, watch};

use crate::store::{Batch, Poison, ProjectedEvent, ReadStore, StoreError};
use crate::{Feed, Projection};

#[derive(Debug, Clone)]
pub struct UpdaterConfig {
    /// Most events read and committed in one transaction.
    pub batch_size: usize,
    /// Tries of a failing projection (or store write) before the event is parked.
    pub max_attempts: u32,
    /// First pause between tries; doubles each time.
    pub retry_backoff: Duration,
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
    changes: broadcast::Sender<Changed>,
    /// Highest sequence handled (applied or parked) per aggregate; a cache of the store's.
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

    /// The aggregates each commit touched, for live push: a subscriber wakes only for its own.
    /// One that lags behind gets `Lagged` and must look for itself.
    pub fn changes(&self) -> broadcast::Sender<Changed> {
        self.changes.clone()
    }

    /// Runs until `shutdown` completes (finishing the batch in hand) or a permanent error.
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), UpdaterError> {
        tokio::pin!(shutdown);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(()),
                step = self.step() => match step {
                    Ok(_) => failures = 0,
                    Err(e) if is_transient(&e) => {
                        failures += 1;
                        let pause = backoff(self.config.retry_backoff, failures).min(Duration::from_secs(5));
                        tracing::warn!(error = %e, ?pause, "read-model updater: transient failure, retrying");
                        tokio::time::sleep(pause).await;
                    }
                    Err(e) => return Err(e),
                },
            }
        }
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
        let ordered = self.in_order(version, events).await?;
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
    /// from the journal, so each aggregate's events are consecutive.
    async fn in_order(
        &mut self,
        version: u32,
        events: Vec<Envelope>,
    ) -> Result<Vec<Envelope>, UpdaterError> {
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
        for event in events {
            let handled = self.handled.get(&event.stream).copied().unwrap_or(0);
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
            self.handled.insert(event.stream.clone(), event.sequence);
            out.push(event);
        }
        Ok(out)
    }

    /// Projects one event, retrying a failure with backoff before giving it up as poison.
    async fn project(&self, event: &Envelope) -> Result<Vec<crate::Change>, Poison> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.projection.changes(event) {
                Ok(changes) => return Ok(changes),
                Err(error) if attempts >= self.config.max_attempts => {
                    tracing::warn!(stream = %event.stream, sequence = event.sequence, %error, "read-model updater: parking a poison event");
                    return Err(Poison { error, attempts });
                }
                Err(_) => tokio::time::sleep(backoff(self.config.retry_backoff, attempts)).await,
            }
        }
    }

    /// Commits a batch. A gap found by the store (the cache was stale) is repaired by reloading;
    /// a batch the store keeps refusing is split so only the event at fault is parked.
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
                    let ordered = self.in_order(batch.version, events).await?;
                    let mut events = Vec::with_capacity(ordered.len());
                    for envelope in ordered {
                        let result = self.project(&envelope).await;
                        events.push(ProjectedEvent { envelope, result });
                    }
                    return Box::pin(self.commit(Batch { events, ..batch })).await;
                }
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) if attempts < self.config.max_attempts => {
                    tracing::warn!(error = %e, "read-model updater: batch refused, trying again");
                    tokio::time::sleep(backoff(self.config.retry_backoff, attempts)).await;
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

fn is_transient(e: &UpdaterError) -> bool {
    match e {
        UpdaterError::Store(e) => e.is_transient(),
        UpdaterError::Journal(e) => matches!(e, JournalError::Unavailable(_)),
    }
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << attempt.min(10).saturating_sub(1));
    // Jitter: 50–100 % of the exponential step.
    exp.mul_f64(0.5 + fastrand::f64() / 2.0)
}
