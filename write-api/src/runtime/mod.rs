//! The aggregate runtime: one ractor actor per resident aggregate, started on demand, passivated
//! when idle or when too many are resident, restored from the latest snapshot plus later events.
//!
//! Admission control: every aggregate's queue and the runtime as a whole have a cap on commands
//! waiting; beyond it a command is refused at once (RESOURCE_EXHAUSTED) instead of growing
//! memory without bound (ractor mailboxes are unbounded).
//!
//! Passivation never loses a queued command: an actor is stopped only while its queue counter is
//! zero, checked and removed from the registry under the same lock that admits commands.

mod actor;
mod pending;
mod types;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiroku_core::{Aggregate, BincodeSnapshotCodec};
use kiroku_journal::{Journal, StreamId};
use parking_lot::Mutex;
use ractor::{Actor, ActorRef, ActorStatus};
use tokio::sync::{Notify, oneshot};

use actor::{ActorMsg, AggregateActor};
pub use pending::{CommandState, Pending};
pub use types::{CommandError, CommandMeta, Executed, now_ms, outcome_of};

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// An aggregate with no command for this long is passivated.
    pub idle_timeout: Duration,
    /// At most this many aggregates stay resident; the least recently used idle ones go first.
    pub max_resident: usize,
    /// Snapshot every N events (0: never).
    pub snapshot_every: u64,
    /// Commands that may wait for one aggregate.
    pub mailbox_capacity: usize,
    /// Commands that may wait in the whole runtime.
    pub max_in_flight: usize,
    /// How often idle and surplus aggregates are looked for.
    pub sweep_interval: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            max_resident: 100_000,
            snapshot_every: 100,
            mailbox_capacity: 1_000,
            max_in_flight: 100_000,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

struct Entry<A: Aggregate> {
    actor: ActorRef<ActorMsg<A>>,
    /// Commands admitted and not yet finished.
    queued: usize,
    last_used: Instant,
}

pub(crate) struct Shared<A: Aggregate> {
    pub journal: Arc<dyn Journal>,
    pub codec: BincodeSnapshotCodec,
    pub config: RuntimeConfig,
    registry: Mutex<HashMap<String, Entry<A>>>,
    in_flight: AtomicUsize,
    accepting: AtomicBool,
    drained: Notify,
    over_cap: Notify,
    /// How many times an aggregate was loaded from the journal (activations).
    pub loads: AtomicU64,
}

impl<A: Aggregate> Shared<A> {
    /// Called by an actor when it has answered a message.
    pub(crate) fn finished(&self, aggregate_id: &str) {
        if let Some(entry) = self.registry.lock().get_mut(aggregate_id) {
            entry.queued -= 1;
            entry.last_used = Instant::now();
        }
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }
}

/// Cheap to clone; all clones drive the same actors.
pub struct AggregateRuntime<A: Aggregate> {
    shared: Arc<Shared<A>>,
    pending: Pending,
}

impl<A: Aggregate> Clone for AggregateRuntime<A> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            pending: self.pending.clone(),
        }
    }
}

impl<A: Aggregate> AggregateRuntime<A> {
    /// Must be called inside a tokio runtime: it starts the passivation sweeper.
    pub fn new(journal: Arc<dyn Journal>, config: RuntimeConfig) -> Self {
        let shared = Arc::new(Shared {
            journal,
            codec: BincodeSnapshotCodec::default(),
            config,
            registry: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            drained: Notify::new(),
            over_cap: Notify::new(),
            loads: AtomicU64::new(0),
        });
        tokio::spawn(sweeper(Arc::downgrade(&shared)));
        Self {
            shared,
            pending: Pending::default(),
        }
    }

    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.shared.journal
    }

    pub fn stream(aggregate_id: &str) -> StreamId {
        StreamId::new(A::TYPE, aggregate_id)
    }

    /// Aggregates currently resident in memory.
    pub fn resident(&self) -> usize {
        self.shared.registry.lock().len()
    }

    /// How many times an aggregate has been loaded from the journal since start.
    pub fn loads(&self) -> u64 {
        self.shared.loads.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> &Pending {
        &self.pending
    }

    /// Decides `command` for `aggregate_id` and waits until its events are durable.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        meta: CommandMeta,
    ) -> Result<Executed, CommandError> {
        let rx = self
            .enqueue(aggregate_id, |reply| ActorMsg::Command {
                command,
                meta,
                reply,
            })
            .await?;
        rx.await.unwrap_or_else(|_| {
            Err(CommandError::Internal(
                "the aggregate stopped unexpectedly".into(),
            ))
        })
    }

    /// Admits `command` and returns at once; its result is then tracked in [`Pending`] under
    /// `(principal, command_id)` until decided (and in the journal after that).
    pub async fn submit(
        &self,
        aggregate_id: &str,
        command: A::Command,
        meta: CommandMeta,
    ) -> Result<(), CommandError> {
        let key = (meta.caller.principal.clone(), meta.command_id.clone());
        let Some(tracker) = self.pending.start(key) else {
            return Ok(()); // the same command is already in flight
        };
        match self
            .enqueue(aggregate_id, |reply| ActorMsg::Command {
                command,
                meta,
                reply,
            })
            .await
        {
            Ok(rx) => {
                tokio::spawn(async move {
                    let result = rx.await.unwrap_or_else(|_| {
                        Err(CommandError::Internal(
                            "the aggregate stopped unexpectedly".into(),
                        ))
                    });
                    tracker.finish(result);
                });
                Ok(())
            }
            Err(e) => {
                tracker.finish(Err(e.clone()));
                Err(e)
            }
        }
    }

    /// The resident state and version of an aggregate (loading it if needed).
    pub async fn inspect(&self, aggregate_id: &str) -> Result<(A, u64), CommandError> {
        let rx = self
            .enqueue(aggregate_id, |reply| ActorMsg::Inspect { reply })
            .await?;
        rx.await.unwrap_or_else(|_| {
            Err(CommandError::Internal(
                "the aggregate stopped unexpectedly".into(),
            ))
        })
    }

    /// The state folded from the journal up to `max_version`, or up to the last event at or before
    /// `at_ms` — without touching the resident actor.
    pub async fn state_at(
        &self,
        aggregate_id: &str,
        max_version: u64,
        at_ms: Option<i64>,
    ) -> Result<(A, u64), CommandError> {
        let stream = Self::stream(aggregate_id);
        let loaded = match at_ms {
            None => actor::load::<A>(&self.shared, &stream, max_version).await?,
            Some(at) => {
                let mut loaded = actor::snapshot_taken_by::<A>(&self.shared, &stream, at).await?;
                let journal = self.shared.journal.as_ref();
                actor::fold(journal, &stream, &mut loaded, max_version, |e| {
                    e.metadata.timestamp_ms <= at
                })
                .await?;
                loaded
            }
        };
        Ok((loaded.state, loaded.version))
    }

    async fn enqueue<T>(
        &self,
        aggregate_id: &str,
        message: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> ActorMsg<A>,
    ) -> Result<oneshot::Receiver<Result<T, CommandError>>, CommandError> {
        let shared = &self.shared;
        if !shared.accepting.load(Ordering::Acquire) {
            return Err(CommandError::Unavailable(
                "the service is shutting down".into(),
            ));
        }
        if shared.in_flight.fetch_add(1, Ordering::AcqRel) >= shared.config.max_in_flight {
            shared.finished_without_entry();
            return Err(CommandError::Overloaded(format!(
                "{} commands are already waiting; retry later",
                shared.config.max_in_flight
            )));
        }
        let (tx, rx) = oneshot::channel();
        let mut msg = message(tx);
        // At most twice: the second time after finding a dead actor in the registry.
        for _ in 0..2 {
            let actor = match self.admit(aggregate_id) {
                Admit::Existing(actor) => actor,
                Admit::Full => {
                    shared.finished_without_entry();
                    return Err(CommandError::Overloaded(format!(
                        "aggregate {aggregate_id} has {} commands waiting; retry later",
                        shared.config.mailbox_capacity
                    )));
                }
                Admit::Absent => match self.spawn(aggregate_id).await {
                    Ok(actor) => actor,
                    Err(e) => {
                        // Admitted to the process but to no actor: give the slot back.
                        shared.finished_without_entry();
                        return Err(e);
                    }
                },
            };
            match actor.send_message(msg) {
                Ok(()) => return Ok(rx),
                Err(ractor::MessagingErr::SendErr(back)) => {
                    msg = back;
                    self.forget(aggregate_id, &actor);
                }
                Err(_) => break,
            }
        }
        shared.finished_without_entry();
        Err(CommandError::Unavailable(format!(
            "aggregate {aggregate_id} could not be started"
        )))
    }

    fn admit(&self, aggregate_id: &str) -> Admit<A> {
        let mut registry = self.shared.registry.lock();
        match registry.get_mut(aggregate_id) {
            None => Admit::Absent,
            Some(entry) if entry.queued >= self.shared.config.mailbox_capacity => Admit::Full,
            Some(entry) => {
                entry.queued += 1;
                entry.last_used = Instant::now();
                Admit::Existing(entry.actor.clone())
            }
        }
    }

    /// Starts an actor for `aggregate_id` with one admitted message, or joins the one another
    /// caller started meanwhile.
    async fn spawn(&self, aggregate_id: &str) -> Result<ActorRef<ActorMsg<A>>, CommandError> {
        let handler = AggregateActor {
            shared: self.shared.clone(),
            stream: Self::stream(aggregate_id),
        };
        let (actor, _) = Actor::spawn(None, handler, ())
            .await
            .map_err(|e| CommandError::Internal(format!("cannot start aggregate actor: {e}")))?;
        let mut registry = self.shared.registry.lock();
        if let Some(entry) = registry.get_mut(aggregate_id) {
            entry.queued += 1;
            entry.last_used = Instant::now();
            let existing = entry.actor.clone();
            drop(registry);
            actor.stop(None);
            return Ok(existing);
        }
        registry.insert(
            aggregate_id.to_owned(),
            Entry {
                actor: actor.clone(),
                queued: 1,
                last_used: Instant::now(),
            },
        );
        if registry.len() > self.shared.config.max_resident {
            self.shared.over_cap.notify_one();
        }
        Ok(actor)
    }

    fn forget(&self, aggregate_id: &str, dead: &ActorRef<ActorMsg<A>>) {
        let mut registry = self.shared.registry.lock();
        if registry
            .get(aggregate_id)
            .is_some_and(|e| e.actor.get_id() == dead.get_id())
        {
            registry.remove(aggregate_id);
        }
    }

    /// Graceful stop: refuse new commands, let every admitted one finish (its events durable),
    /// then stop the actors. Returns false if `timeout` passed first.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        let shared = &self.shared;
        shared.accepting.store(false, Ordering::Release);
        let drained = tokio::time::timeout(timeout, async {
            loop {
                let notified = shared.drained.notified();
                if shared.in_flight.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
        })
        .await
        .is_ok();
        let actors: Vec<_> = shared
            .registry
            .lock()
            .drain()
            .map(|(_, e)| e.actor)
            .collect();
        for actor in actors {
            actor.stop(None);
        }
        drained
    }
}

enum Admit<A: Aggregate> {
    Existing(ActorRef<ActorMsg<A>>),
    Absent,
    Full,
}

impl<A: Aggregate> Shared<A> {
    fn finished_without_entry(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }

    /// Stops idle aggregates, and the least recently used idle ones while over the cap.
    fn sweep(&self) -> usize {
        let now = Instant::now();
        let idle_timeout = self.config.idle_timeout;
        let mut stopped = Vec::new();
        {
            let mut registry = self.registry.lock();
            registry.retain(|_, e| {
                let dead = e.actor.get_status() == ActorStatus::Stopped;
                let keep =
                    !dead && (e.queued > 0 || now.duration_since(e.last_used) < idle_timeout);
                if !keep {
                    stopped.push(e.actor.clone());
                }
                keep
            });
            let cap = self.config.max_resident;
            if registry.len() > cap {
                // Evict down to 90% of the cap so the next few activations do not sweep again.
                let target = cap - cap / 10;
                let mut idle: Vec<_> = registry
                    .iter()
                    .filter(|(_, e)| e.queued == 0)
                    .map(|(k, e)| (e.last_used, k.clone()))
                    .collect();
                idle.sort_unstable();
                for (_, id) in idle.into_iter().take(registry.len() - target) {
                    if let Some(e) = registry.remove(&id) {
                        stopped.push(e.actor);
                    }
                }
            }
        }
        for actor in &stopped {
            actor.stop(None);
        }
        stopped.len()
    }
}

/// Runs until the runtime shuts down (or its last handle is dropped).
async fn sweeper<A: Aggregate>(shared: std::sync::Weak<Shared<A>>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        tokio::select! {
            _ = tokio::time::sleep(s.config.sweep_interval) => {}
            _ = s.over_cap.notified() => {}
        }
        if !s.accepting.load(Ordering::Acquire) {
            return;
        }
        let n = s.sweep();
        if n > 0 {
            tracing::debug!(
                passivated = n,
                resident = s.registry.lock().len(),
                "aggregates passivated"
            );
        }
    }
}

#[cfg(test)]
mod tests;
