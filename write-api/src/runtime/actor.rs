//! One ractor actor per resident aggregate: holds its state, decides its commands in order.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kiroku_core::{Aggregate, SnapshotCodec};
use kiroku_journal::{
    AppendOutcome, AppendRequest, CommandOutcome, CommandRecord, EventMetadata, Journal,
    JournalError, NewEvent, SnapshotRecord, StreamId,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::Shared;
use super::types::{CommandError, CommandMeta, Executed, now_ms, outcome_of};

pub(super) enum ActorMsg<A: Aggregate> {
    Command {
        command: A::Command,
        meta: CommandMeta,
        reply: oneshot::Sender<Result<Executed, CommandError>>,
    },
    /// Reports the resident state and version (loading it if needed). For tests and tooling.
    Inspect {
        reply: oneshot::Sender<Result<(A, u64), CommandError>>,
    },
}

pub(super) struct AggregateActor<A: Aggregate> {
    pub shared: Arc<Shared<A>>,
    pub stream: StreamId,
}

/// The aggregate as of `version`; `None` until loaded, and again after anything that leaves the
/// memory possibly out of step with the journal (a conflict, an unknown write outcome, a panic).
pub(crate) struct Loaded<A> {
    pub state: A,
    pub version: u64,
    /// Timestamp of the newest event folded (or of the snapshot loaded): the aggregate's events
    /// are stamped no earlier than this, so their timestamps never go back in sequence order, even
    /// across writers whose clocks differ. Time travel relies on it.
    pub last_ms: i64,
}

impl<A: Aggregate> Loaded<A> {
    fn empty() -> Self {
        Self {
            state: A::default(),
            version: 0,
            last_ms: i64::MIN,
        }
    }

    /// A timestamp for something that happens to the aggregate now: never before its last event.
    fn now_ms(&self) -> i64 {
        now_ms().max(self.last_ms)
    }
}

impl<A: Aggregate> Actor for AggregateActor<A> {
    type Msg = ActorMsg<A>;
    type State = Option<Loaded<A>>;
    type Arguments = ();

    /// Loading happens on the first message, not here: a slow journal must not block the spawner.
    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(None)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        loaded: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ActorMsg::Command {
                command,
                meta,
                reply,
            } => {
                let finished = Finished(&self.shared, &self.stream.aggregate_id);
                let span = tracing::info_span!(
                    "command",
                    command_id = %meta.command_id,
                    aggregate_id = %self.stream.aggregate_id,
                    correlation_id = %meta.correlation_id,
                );
                // Instrument, never `enter()`, across an await: the span must follow the future.
                // Boxed: an idle actor's task then holds a pointer, not the whole decide/load state
                // machine — this is most of the memory of a resident aggregate.
                let result = Box::pin(self.decide(loaded, command, &meta).instrument(span)).await;
                drop(finished);
                // The caller may have stopped waiting; the decision stands either way.
                let _ = reply.send(result);
            }
            ActorMsg::Inspect { reply } => {
                let finished = Finished(&self.shared, &self.stream.aggregate_id);
                let result = Box::pin(self.ensure_loaded(loaded))
                    .await
                    .map(|l| (l.state.clone(), l.version));
                drop(finished);
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

/// Marks a message as answered when dropped: also when its handling panicked, so that a bug can
/// never leak the admission counters (after `max_in_flight` leaks the process would refuse all).
struct Finished<'a, A: Aggregate>(&'a Shared<A>, &'a str);

impl<A: Aggregate> Drop for Finished<'_, A> {
    fn drop(&mut self) {
        self.0.finished(self.1);
    }
}

/// How often one command is decided again after finding the journal ahead of the memory (another
/// writer of the same aggregate) before the caller is told to resend.
const MAX_DECISIONS: u32 = 5;

/// A decision taken from memory that the journal showed to be stale: reload and decide again.
struct Stale;

impl<A: Aggregate> AggregateActor<A> {
    fn journal(&self) -> &dyn Journal {
        self.shared.journal.as_ref()
    }

    async fn ensure_loaded<'a>(
        &self,
        loaded: &'a mut Option<Loaded<A>>,
    ) -> Result<&'a mut Loaded<A>, CommandError> {
        if loaded.is_none() {
            *loaded = Some(load::<A>(&self.shared, &self.stream, u64::MAX).await?);
        }
        Ok(loaded.as_mut().expect("loaded above"))
    }

    /// Decides `command` on the aggregate's state. A refusal is recorded only if the journal is
    /// still at the version it was decided on, and an append that meets a newer journal is decided
    /// again on the reloaded state (unless the client named the version it expected): no answer
    /// is ever taken from stale memory.
    async fn decide(
        &self,
        slot: &mut Option<Loaded<A>>,
        command: A::Command,
        meta: &CommandMeta,
    ) -> Result<Executed, CommandError> {
        for attempt in 1..=MAX_DECISIONS {
            match self.decide_once(slot, &command, meta).await {
                Ok(decided) => return decided,
                Err(Stale) => {
                    *slot = None;
                    tracing::debug!(
                        attempt,
                        "the journal was ahead of the memory; deciding again"
                    );
                }
            }
        }
        Err(CommandError::Unavailable(format!(
            "the aggregate kept changing under this command ({MAX_DECISIONS} tries); resending the same command id is safe"
        )))
    }

    async fn decide_once(
        &self,
        slot: &mut Option<Loaded<A>>,
        command: &A::Command,
        meta: &CommandMeta,
    ) -> Result<Result<Executed, CommandError>, Stale> {
        let current = match self.ensure_loaded(slot).await {
            Ok(current) => current,
            Err(e) => return Ok(Err(e)),
        };
        let version = current.version;
        if let Some(expected) = meta.expected_version.filter(|e| *e != version) {
            let conflict = CommandError::Conflict {
                expected,
                actual: version,
            };
            return self.refuse(meta, conflict, version).await;
        }
        let decided = std::panic::catch_unwind(AssertUnwindSafe(|| {
            current.state.handle(&meta.caller, command)
        }));
        let events = match decided {
            Ok(Ok(events)) => events,
            Ok(Err(rejection)) => {
                return self
                    .refuse(meta, CommandError::rejected(rejection), version)
                    .await;
            }
            Err(_) => {
                *slot = None;
                tracing::error!(
                    "command handler panicked; the aggregate will be reloaded from the journal"
                );
                return Ok(Err(CommandError::Internal(
                    "the command handler failed unexpectedly".into(),
                )));
            }
        };
        let request = AppendRequest {
            stream: self.stream.clone(),
            expected_sequence: version,
            events: events
                .iter()
                .map(|e| {
                    let enc = A::encode(e);
                    NewEvent {
                        event_type: enc.event_type,
                        schema_version: enc.schema_version,
                        payload: enc.payload,
                    }
                })
                .collect(),
            metadata: EventMetadata {
                command_id: meta.command_id.clone(),
                correlation_id: meta.correlation_id.clone(),
                causation_id: meta.causation_id.clone(),
                principal: meta.caller.principal.clone(),
                timestamp_ms: current.now_ms(),
            },
        };
        let stamped = request.metadata.timestamp_ms;
        let outcome = match self.journal().append(request).await {
            Ok(outcome) => outcome,
            // Another writer moved the stream: decide again on its newer state. Where the client
            // named a version, deciding again compares it with the journal's and refuses then.
            Err(JournalError::Conflict { actual, .. }) => {
                tracing::info!(decided_at = version, actual, "append met a newer journal");
                return Err(Stale);
            }
            Err(e) => {
                // Unknown whether the append happened: reload before deciding again, so the
                // memory is never ahead of the journal.
                *slot = None;
                tracing::warn!(error = %e, "append failed");
                return Ok(Err(e.into()));
            }
        };
        Ok(match outcome {
            AppendOutcome::Duplicate(original) => outcome_of(&original, true),
            AppendOutcome::Appended(record) => {
                let applied = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    events.iter().for_each(|e| current.state.apply(e));
                }));
                let executed = match outcome_of(&record, false) {
                    Ok(executed) => executed,
                    Err(e) => return Ok(Err(e)),
                };
                if applied.is_err() {
                    // The events are durable; only the memory is suspect.
                    *slot = None;
                    tracing::error!(
                        "apply panicked; the aggregate will be reloaded from the journal"
                    );
                } else {
                    let before = current.version;
                    current.version = executed.version;
                    current.last_ms = current.last_ms.max(stamped);
                    self.maybe_snapshot(current, before).await;
                }
                Ok(executed)
            }
        })
    }

    /// Records a refusal decided at `version` under the command id — unless the id was decided
    /// before, in which case that original decision is what the caller gets; or the journal has
    /// moved past `version`, in which case the refusal is stale and nothing is recorded.
    async fn refuse(
        &self,
        meta: &CommandMeta,
        refusal: CommandError,
        version: u64,
    ) -> Result<Result<Executed, CommandError>, Stale> {
        let message = refusal.to_string();
        let record = CommandRecord {
            principal: meta.caller.principal.clone(),
            command_id: meta.command_id.clone(),
            stream: self.stream.clone(),
            outcome: CommandOutcome::Rejected {
                code: refusal.code() as i32,
                message,
            },
            recorded_at_ms: now_ms(),
        };
        let stored = match self
            .journal()
            .record_rejection(record.clone(), version)
            .await
        {
            Ok(stored) => stored,
            Err(JournalError::Conflict { actual, .. }) => {
                tracing::info!(
                    decided_at = version,
                    actual,
                    "refusal decided on stale state; deciding again"
                );
                return Err(Stale);
            }
            Err(e) => return Ok(Err(e.into())),
        };
        Ok(if stored == record {
            Err(refusal)
        } else {
            outcome_of(&stored, true)
        })
    }

    async fn maybe_snapshot(&self, current: &Loaded<A>, before: u64) {
        let every = self.shared.config.snapshot_every;
        if every == 0 || current.version / every == before / every {
            return;
        }
        let snapshot = SnapshotRecord {
            stream: self.stream.clone(),
            sequence: current.version,
            // Never before the events it holds: time travel uses it only for moments after all.
            timestamp_ms: current.now_ms(),
            state: self.shared.codec.encode(&current.state),
        };
        // A snapshot is a cache: failing to write one costs a longer replay later, nothing more.
        if let Err(e) = self.journal().save_snapshot(snapshot).await {
            tracing::warn!(error = %e, "snapshot not saved");
        }
    }
}

/// Rebuilds an aggregate up to `max_version`: the newest usable snapshot at or below it, then
/// the later events. An unreadable snapshot is skipped (logged), never an error.
pub(crate) async fn load<A: Aggregate>(
    shared: &Shared<A>,
    stream: &StreamId,
    max_version: u64,
) -> Result<Loaded<A>, CommandError> {
    let journal = shared.journal.as_ref();
    let snapshot = journal.latest_snapshot(stream, max_version).await?;
    let mut loaded = match snapshot {
        Some(s) => match shared.codec.decode::<A>(&s.state) {
            Ok(state) => Loaded {
                state,
                version: s.sequence,
                last_ms: s.timestamp_ms,
            },
            Err(e) => {
                tracing::warn!(stream = %stream, sequence = s.sequence, error = %e, "snapshot ignored, replaying events");
                Loaded::empty()
            }
        },
        None => Loaded::empty(),
    };
    fold(journal, stream, &mut loaded, max_version, |_| true).await?;
    shared.loads.fetch_add(1, Ordering::Relaxed);
    Ok(loaded)
}

/// The newest decodable snapshot stamped at or before `at_ms`, walking the kept snapshots
/// downwards; the empty aggregate when none is old enough. A snapshot is stamped no earlier than
/// any event it holds (`Loaded::now_ms`), so it holds only events of that moment or earlier and
/// time travel then reads only the tail.
pub(crate) async fn snapshot_taken_by<A: Aggregate>(
    shared: &Shared<A>,
    stream: &StreamId,
    at_ms: i64,
) -> Result<Loaded<A>, CommandError> {
    let mut below = u64::MAX;
    while let Some(snapshot) = shared.journal.latest_snapshot(stream, below).await? {
        if snapshot.timestamp_ms <= at_ms {
            match shared.codec.decode::<A>(&snapshot.state) {
                Ok(state) => {
                    return Ok(Loaded {
                        state,
                        version: snapshot.sequence,
                        last_ms: snapshot.timestamp_ms,
                    });
                }
                Err(e) => {
                    tracing::warn!(stream = %stream, sequence = snapshot.sequence, error = %e, "snapshot ignored, trying an older one")
                }
            }
        }
        match snapshot.sequence.checked_sub(1) {
            Some(older) if older > 0 => below = older,
            _ => break,
        }
    }
    Ok(Loaded::empty())
}

/// Applies the events after `version` up to `max_version` while `keep` accepts them.
pub(crate) async fn fold<A: Aggregate>(
    journal: &dyn Journal,
    stream: &StreamId,
    loaded: &mut Loaded<A>,
    max_version: u64,
    keep: impl Fn(&kiroku_journal::Envelope) -> bool,
) -> Result<(), CommandError> {
    const PAGE: usize = 1000;
    loop {
        let page = journal
            .read_stream(stream, loaded.version + 1, max_version, PAGE)
            .await?;
        let full = page.len() == PAGE;
        for envelope in &page {
            if !keep(envelope) {
                return Ok(());
            }
            let event = A::decode(
                &envelope.event_type,
                envelope.schema_version,
                &envelope.payload,
            )
            .map_err(|e| {
                CommandError::Internal(format!(
                    "stored event {}#{}: {e}",
                    stream, envelope.sequence
                ))
            })?;
            // A panicking `apply` is a bug in the domain: this load fails (INTERNAL), the actor
            // lives on and loads again for the next command.
            std::panic::catch_unwind(AssertUnwindSafe(|| loaded.state.apply(&event))).map_err(|_| {
                tracing::error!(stream = %stream, sequence = envelope.sequence, "apply panicked while loading");
                CommandError::Internal(format!(
                    "stored event {}#{} could not be applied",
                    stream, envelope.sequence
                ))
            })?;
            loaded.version = envelope.sequence;
            loaded.last_ms = loaded.last_ms.max(envelope.metadata.timestamp_ms);
        }
        if !full {
            return Ok(());
        }
    }
}
