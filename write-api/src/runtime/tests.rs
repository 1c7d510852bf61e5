//! Runtime behaviour against a real SQLite journal; a wrapper injects the faults (a stalled or
//! failing journal) that cannot be produced for real on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kiroku_core::{Aggregate, Caller, DecodeError, EncodedEvent, Rejection};
use kiroku_journal::*;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::*;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    value: i64,
    events: u64,
}

#[derive(Debug)]
enum Cmd {
    Add(i64),
    /// Subtracts, refused when the value is smaller: a rule that depends on the state.
    Take(i64),
    Panic,
}

/// An event `apply` cannot handle (a domain bug): it panics on every load after it is stored.
const APPLY_PANICS: i64 = 13_013;

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = Cmd;
    type Event = i64;

    fn handle(&self, _: &Caller, command: &Cmd) -> Result<Vec<i64>, Rejection> {
        match command {
            Cmd::Add(0) => Err(Rejection::invalid("adding zero changes nothing")),
            Cmd::Add(n) => Ok(vec![*n]),
            Cmd::Take(n) if self.value < *n => Err(Rejection::precondition(format!(
                "cannot take {n} from {}",
                self.value
            ))),
            Cmd::Take(n) => Ok(vec![-n]),
            Cmd::Panic => panic!("handler bug"),
        }
    }
    fn apply(&mut self, event: &i64) {
        assert_ne!(*event, APPLY_PANICS, "apply bug");
        self.value += event;
        self.events += 1;
    }
    fn encode(event: &i64) -> EncodedEvent {
        EncodedEvent {
            event_type: "test.Added".into(),
            schema_version: 1,
            payload: event.to_le_bytes().to_vec(),
        }
    }
    fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<i64, DecodeError> {
        payload
            .try_into()
            .map(i64::from_le_bytes)
            .map_err(|_| DecodeError {
                event_type: event_type.into(),
                schema_version,
                reason: "not 8 bytes".into(),
            })
    }
}

/// A real SQLite journal whose appends can be held at a gate or made to fail once.
struct Faulty {
    inner: SqliteJournal,
    gate: Semaphore,
    gated: AtomicBool,
    fail_next_append: AtomicBool,
}

#[async_trait]
impl Journal for Faulty {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, JournalError> {
        if self.gated.load(Ordering::SeqCst) {
            drop(self.gate.acquire().await.unwrap());
        }
        if self.fail_next_append.swap(false, Ordering::SeqCst) {
            // The worst case: the write happened but the caller hears it failed.
            self.inner.append(request).await?;
            return Err(JournalError::Unavailable("injected: response lost".into()));
        }
        self.inner.append(request).await
    }
    async fn record_rejection(
        &self,
        r: CommandRecord,
        decided_at: u64,
    ) -> Result<CommandRecord, JournalError> {
        self.inner.record_rejection(r, decided_at).await
    }
    async fn command_record(
        &self,
        p: &str,
        c: &str,
    ) -> Result<Option<CommandRecord>, JournalError> {
        self.inner.command_record(p, c).await
    }
    async fn read_stream(
        &self,
        s: &StreamId,
        f: u64,
        t: u64,
        l: usize,
    ) -> Result<Vec<Envelope>, JournalError> {
        self.inner.read_stream(s, f, t, l).await
    }
    async fn highest_sequence(&self, s: &StreamId) -> Result<u64, JournalError> {
        self.inner.highest_sequence(s).await
    }
    fn has_global_order(&self) -> bool {
        true
    }
    async fn read_all(&self, a: u64, l: usize) -> Result<Vec<Envelope>, JournalError> {
        self.inner.read_all(a, l).await
    }
    async fn delete_up_to(&self, s: &StreamId, t: u64) -> Result<(), JournalError> {
        self.inner.delete_up_to(s, t).await
    }
    async fn save_snapshot(&self, s: SnapshotRecord) -> Result<(), JournalError> {
        self.inner.save_snapshot(s).await
    }
    async fn latest_snapshot(
        &self,
        s: &StreamId,
        m: u64,
    ) -> Result<Option<SnapshotRecord>, JournalError> {
        self.inner.latest_snapshot(s, m).await
    }
}

struct Fixture {
    journal: Arc<Faulty>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inner =
            SqliteJournal::open(dir.path().join("j.db"), SqliteJournalOptions::default()).unwrap();
        let journal = Arc::new(Faulty {
            inner,
            gate: Semaphore::new(0),
            gated: AtomicBool::new(false),
            fail_next_append: AtomicBool::new(false),
        });
        Self { journal, _dir: dir }
    }

    fn runtime(&self, config: RuntimeConfig) -> AggregateRuntime<Counter> {
        AggregateRuntime::new(self.journal.clone(), config)
    }
}

fn meta(command_id: &str) -> CommandMeta {
    meta_as("ann", command_id)
}

fn meta_as(principal: &str, command_id: &str) -> CommandMeta {
    CommandMeta {
        command_id: command_id.into(),
        caller: Caller::new(principal),
        expected_version: None,
        correlation_id: "corr".into(),
        causation_id: command_id.into(),
    }
}

async fn replayed(rt: &AggregateRuntime<Counter>, id: &str) -> (Counter, u64) {
    rt.state_at(id, u64::MAX, None).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_keep_every_aggregate_dense_and_equal_to_replay() {
    let f = Fixture::new();
    let rt = f.runtime(RuntimeConfig {
        snapshot_every: 7,
        ..Default::default()
    });
    let mut tasks = Vec::new();
    for client in 0..100 {
        let rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                let id = format!("c{}", (client + n) % 5);
                rt.execute(&id, Cmd::Add(1), meta(&format!("{client}-{n}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut total = 0;
    for i in 0..5 {
        let id = format!("c{i}");
        let events = read_whole_stream(f.journal.as_ref(), &StreamId::new("counter", &id), 1, 100)
            .await
            .unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{id} is dense"
        );
        let resident = rt.inspect(&id).await.unwrap();
        assert_eq!(
            resident,
            replayed(&rt, &id).await,
            "{id}: memory equals replay from zero"
        );
        assert_eq!(resident.1, seqs.len() as u64);
        total += resident.0.value;
    }
    assert_eq!(total, 1000);
}

#[tokio::test]
async fn a_panicking_handler_fails_only_its_command() {
    let f = Fixture::new();
    let rt = f.runtime(RuntimeConfig::default());
    rt.execute("a", Cmd::Add(5), meta("1")).await.unwrap();
    let err = rt.execute("a", Cmd::Panic, meta("2")).await.unwrap_err();
    assert!(matches!(err, CommandError::Internal(_)), "{err:?}");
    // The same aggregate goes on from the journal; others never noticed.
    let ok = rt.execute("a", Cmd::Add(2), meta("3")).await.unwrap();
    assert_eq!(ok.version, 2);
    assert_eq!(rt.inspect("a").await.unwrap().0.value, 7);
    assert_eq!(
        rt.execute("b", Cmd::Add(1), meta("4"))
            .await
            .unwrap()
            .version,
        1
    );
}

#[tokio::test]
async fn idle_aggregates_passivate_and_come_back_from_snapshot_and_tail() {
    let f = Fixture::new();
    let config = RuntimeConfig {
        idle_timeout: Duration::from_millis(50),
        sweep_interval: Duration::from_millis(20),
        snapshot_every: 3,
        ..Default::default()
    };
    let rt = f.runtime(config);
    for n in 0..10 {
        rt.execute("a", Cmd::Add(1), meta(&format!("{n}")))
            .await
            .unwrap();
    }
    assert_eq!(rt.resident(), 1);
    assert_eq!(rt.loads(), 1);
    let snapshot = f
        .journal
        .latest_snapshot(&StreamId::new("counter", "a"), u64::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.sequence, 9, "a snapshot every 3 events");
    tokio::time::timeout(Duration::from_secs(5), async {
        while rt.resident() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the idle aggregate is passivated");
    let executed = rt.execute("a", Cmd::Add(1), meta("again")).await.unwrap();
    assert_eq!(executed.version, 11);
    assert_eq!(rt.loads(), 2, "restored once more");
    assert_eq!(
        rt.inspect("a").await.unwrap(),
        (
            Counter {
                value: 11,
                events: 11
            },
            11
        )
    );
}

#[tokio::test]
async fn resident_aggregates_stay_under_the_cap() {
    let f = Fixture::new();
    let config = RuntimeConfig {
        max_resident: 10,
        sweep_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let rt = f.runtime(config);
    for n in 0..40 {
        rt.execute(&format!("a{n}"), Cmd::Add(1), meta(&format!("{n}")))
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        while rt.resident() > 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("surplus aggregates are passivated without waiting for the periodic sweep");
    // An evicted aggregate comes back intact.
    assert_eq!(
        rt.execute("a0", Cmd::Add(1), meta("a0-again"))
            .await
            .unwrap()
            .version,
        2
    );
}

#[tokio::test]
async fn an_undecodable_snapshot_is_ignored() {
    let f = Fixture::new();
    let rt = f.runtime(RuntimeConfig {
        snapshot_every: 0,
        ..Default::default()
    });
    for n in 0..4 {
        rt.execute("a", Cmd::Add(2), meta(&format!("{n}")))
            .await
            .unwrap();
    }
    let stream = StreamId::new("counter", "a");
    let garbage = SnapshotRecord {
        stream,
        sequence: 4,
        timestamp_ms: 0,
        state: vec![0xde, 0xad, 0xbe, 0xef],
    };
    f.journal.save_snapshot(garbage).await.unwrap();
    let fresh = f.runtime(RuntimeConfig::default());
    assert_eq!(
        fresh.inspect("a").await.unwrap(),
        (
            Counter {
                value: 8,
                events: 4
            },
            4
        )
    );
    assert_eq!(
        fresh
            .execute("a", Cmd::Add(1), meta("5"))
            .await
            .unwrap()
            .version,
        5
    );
}

#[tokio::test]
async fn a_full_mailbox_refuses_at_once_and_loses_nothing_admitted() {
    let f = Fixture::new();
    let rt = f.runtime(RuntimeConfig {
        mailbox_capacity: 2,
        ..Default::default()
    });
    rt.execute("a", Cmd::Add(1), meta("warm")).await.unwrap();
    f.journal.gated.store(true, Ordering::SeqCst);
    let first = tokio::spawn({
        let rt = rt.clone();
        async move { rt.execute("a", Cmd::Add(1), meta("1")).await }
    });
    let second = tokio::spawn({
        let rt = rt.clone();
        async move { rt.execute("a", Cmd::Add(1), meta("2")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = rt.execute("a", Cmd::Add(1), meta("3")).await.unwrap_err();
    assert!(matches!(third, CommandError::Overloaded(_)), "{third:?}");
    assert_eq!(third.code(), tonic::Code::ResourceExhausted);
    // Another aggregate is not affected by this one's queue.
    let other = tokio::spawn({
        let rt = rt.clone();
        async move { rt.execute("b", Cmd::Add(1), meta("b1")).await }
    });
    f.journal.gated.store(false, Ordering::SeqCst);
    f.journal.gate.add_permits(10);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    other.await.unwrap().unwrap();
    assert_eq!(rt.inspect("a").await.unwrap().1, 3);
}

#[tokio::test]
async fn a_resent_command_id_appends_nothing_also_after_a_restart() {
    let f = Fixture::new();
    let rt = f.runtime(RuntimeConfig::default());
    let first = rt.execute("a", Cmd::Add(3), meta("x")).await.unwrap();
    assert!(!first.duplicate);
    for runtime in [rt.clone(), f.runtime(RuntimeConfig::default())] {
        // Even a command that would now be rejected (Add(0)) returns the original result.
        for cmd in [Cmd::Add(3), Cmd::Add(0)] {
            let again = runtime.execute("a", cmd, meta("x")).await.unwrap();
            assert_eq!(
                again,
                Executed {
                    duplicate: true,
                    ..first.clone()
                }
            );
        }
        assert_eq!(runtime.inspect("a").await.unwrap().1, 1);
    }
    // The same id from another principal is another command.
    assert_eq!(
        rt.execute("a", Cmd::Add(1), meta_as("bob", "x"))
            .await
            .unwrap()
            .version,
        2
    );
}

#[tokio::test]
async fn rejections_are_kept_under_their_command_id() {
    let f = Fixture::new();
    let rt = f.runtime(RuntimeConfig::default());
    rt.execute("a", Cmd::Add(1), meta("1")).await.unwrap();
    let err = rt
        .execute("a", Cmd::Add(0), meta("zero"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CommandError::Rejected {
                code: tonic::Code::InvalidArgument,
                duplicate: false,
                ..
            }
        ),
        "{err:?}"
    );
    let again = rt
        .execute("a", Cmd::Add(5), meta("zero"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &again,
            CommandError::Rejected {
                code: tonic::Code::InvalidArgument,
                duplicate: true,
                ..
            }
        ),
        "{again:?}"
    );
    assert_eq!(rt.inspect("a").await.unwrap().1, 1, "nothing appended");
}

#[tokio::test]
async fn a_wrong_expected_version_is_a_conflict_with_the_actual_version() {
    let f = Fixture::new();
    let rt = f.runtime(RuntimeConfig::default());
    rt.execute("a", Cmd::Add(1), meta("1")).await.unwrap();
    let mut m = meta("2");
    m.expected_version = Some(0);
    let err = rt.execute("a", Cmd::Add(1), m).await.unwrap_err();
    assert_eq!(
        err,
        CommandError::Conflict {
            expected: 0,
            actual: 1
        }
    );
    let mut m = meta("3");
    m.expected_version = Some(1);
    assert_eq!(rt.execute("a", Cmd::Add(1), m).await.unwrap().version, 2);
}

#[tokio::test]
async fn a_lost_append_response_never_leaves_memory_ahead_or_behind_the_journal() {
    let f = Fixture::new();
    let rt = f.runtime(RuntimeConfig::default());
    rt.execute("a", Cmd::Add(1), meta("1")).await.unwrap();
    f.journal.fail_next_append.store(true, Ordering::SeqCst);
    let err = rt
        .execute("a", Cmd::Add(10), meta("lost"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    // The client resends the same id: it was in fact written, so it is recognised, not redone.
    let resent = rt.execute("a", Cmd::Add(10), meta("lost")).await.unwrap();
    assert!(resent.duplicate);
    assert_eq!(
        rt.inspect("a").await.unwrap(),
        (
            Counter {
                value: 11,
                events: 2
            },
            2
        )
    );
    assert_eq!(
        rt.execute("a", Cmd::Add(1), meta("next"))
            .await
            .unwrap()
            .version,
        3
    );
}

#[tokio::test]
async fn shutdown_drains_admitted_commands_then_refuses() {
    let f = Fixture::new();
    let rt = f.runtime(RuntimeConfig::default());
    f.journal.gated.store(true, Ordering::SeqCst);
    let admitted = tokio::spawn({
        let rt = rt.clone();
        async move { rt.execute("a", Cmd::Add(1), meta("1")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = tokio::spawn({
        let rt = rt.clone();
        async move { rt.shutdown(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = rt.execute("b", Cmd::Add(1), meta("2")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    f.journal.gate.add_permits(10);
    assert_eq!(admitted.await.unwrap().unwrap().version, 1);
    assert!(stopping.await.unwrap(), "drained before the timeout");
    assert_eq!(
        f.journal
            .highest_sequence(&StreamId::new("counter", "a"))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn accepted_commands_are_tracked_until_decided() {
    let f = Fixture::new();
    let rt = f.runtime(RuntimeConfig::default());
    f.journal.gated.store(true, Ordering::SeqCst);
    rt.submit("a", Cmd::Add(4), meta("s1")).await.unwrap();
    let mut watch = rt
        .pending()
        .watch("ann", "s1")
        .expect("tracked while undecided");
    assert_eq!(*watch.borrow(), CommandState::Pending);
    assert!(
        rt.pending().watch("bob", "s1").is_none(),
        "another principal does not see it"
    );
    f.journal.gate.add_permits(10);
    let done = watch
        .wait_for(|s| *s != CommandState::Pending)
        .await
        .unwrap()
        .clone();
    let CommandState::Done(Ok(executed)) = done else {
        panic!("{done:?}")
    };
    assert_eq!(executed.version, 1);
    assert!(rt.pending().watch("ann", "s1").is_none());
    let record = f
        .journal
        .command_record("ann", "s1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome_of(&record, false).unwrap(), executed);
}

/// Two runtimes on one journal stand for two processes: `stale` loaded the aggregate before
/// `fresh` changed it.
async fn two_writers(f: &Fixture) -> (AggregateRuntime<Counter>, AggregateRuntime<Counter>) {
    let fresh = f.runtime(RuntimeConfig::default());
    let stale = f.runtime(RuntimeConfig::default());
    fresh.execute("a", Cmd::Add(1), meta("1")).await.unwrap();
    assert_eq!(
        stale.inspect("a").await.unwrap().1,
        1,
        "stale holds version 1"
    );
    fresh.execute("a", Cmd::Add(5), meta("2")).await.unwrap();
    (fresh, stale)
}

#[tokio::test]
async fn a_rejection_from_stale_memory_is_decided_again_and_never_stored() {
    let f = Fixture::new();
    let (_fresh, stale) = two_writers(&f).await;
    // On its memory (value 1) `stale` would refuse; the journal says 6.
    let taken = stale
        .execute("a", Cmd::Take(4), meta("take"))
        .await
        .unwrap();
    assert_eq!((taken.version, taken.duplicate), (3, false));
    let record = f
        .journal
        .command_record("ann", "take")
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(record.outcome, CommandOutcome::Succeeded { version: 3, .. }),
        "{record:?}"
    );
    // A real refusal on fresh state is still recorded and returned to a resend.
    let refused = stale.execute("a", Cmd::Take(100), meta("too-much")).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::FailedPrecondition);
    let again = stale.execute("a", Cmd::Take(1), meta("too-much")).await;
    assert!(matches!(
        again,
        Err(CommandError::Rejected {
            duplicate: true,
            ..
        })
    ));
}

#[tokio::test]
async fn an_expected_version_is_compared_with_the_journal_not_with_stale_memory() {
    let f = Fixture::new();
    let (fresh, stale) = two_writers(&f).await;
    // The client read version 2 elsewhere; `stale` still holds 1. Correct, so it succeeds.
    let mut m = meta("exp-2");
    m.expected_version = Some(2);
    assert_eq!(stale.execute("a", Cmd::Add(1), m).await.unwrap().version, 3);
    // Really out of date: ABORTED with the journal's version, even from stale memory.
    fresh.execute("a", Cmd::Add(1), meta("4")).await.unwrap();
    let mut m = meta("exp-1");
    m.expected_version = Some(1);
    let err = stale.execute("a", Cmd::Add(1), m).await.unwrap_err();
    assert_eq!(
        err,
        CommandError::Conflict {
            expected: 1,
            actual: 4
        }
    );
}

#[tokio::test]
async fn a_command_without_expected_version_meeting_a_newer_journal_is_decided_again() {
    let f = Fixture::new();
    let (_fresh, stale) = two_writers(&f).await;
    let executed = stale.execute("a", Cmd::Add(1), meta("3")).await.unwrap();
    assert_eq!(
        executed.version, 3,
        "appended after the other writer's events"
    );
    assert_eq!(
        replayed(&stale, "a").await,
        (
            Counter {
                value: 7,
                events: 3
            },
            3
        )
    );
}

#[tokio::test]
async fn a_panicking_apply_while_loading_answers_internal_and_leaks_no_admission() {
    let f = Fixture::new();
    let rt = f.runtime(RuntimeConfig {
        max_in_flight: 3,
        ..Default::default()
    });
    // Stored fine; `apply` panics on it after the append (memory dropped), and on every load.
    rt.execute("bad", Cmd::Add(APPLY_PANICS), meta("poison"))
        .await
        .unwrap();
    for n in 0..6 {
        let err = rt
            .execute("bad", Cmd::Add(1), meta(&format!("after-{n}")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    }
    // Six failed loads with room for three in flight: nothing leaked, others still run.
    for n in 0..5 {
        rt.execute("good", Cmd::Add(1), meta(&format!("good-{n}")))
            .await
            .unwrap();
    }
}

/// A writer whose clock runs a minute ahead stamps event 1; this process, with the right clock,
/// appends events 2 and 3 and snapshots. Stamps never go back in an aggregate's history, so the
/// snapshot is not mistaken for the state at a moment between the two clocks: time travel from
/// the snapshot equals the replay from the first event.
#[tokio::test]
async fn event_stamps_never_go_back_so_time_travel_from_a_snapshot_equals_a_replay() {
    let f = Fixture::new();
    let ahead = now_ms() + 60_000;
    let mut first = kiroku_journal::conformance::request(&StreamId::new("counter", "a"), 0, 1, "x");
    let encoded = Counter::encode(&1);
    first.events[0] = NewEvent {
        event_type: encoded.event_type,
        schema_version: encoded.schema_version,
        payload: encoded.payload,
    };
    first.metadata.timestamp_ms = ahead;
    f.journal.append(first).await.unwrap();
    let rt = f.runtime(RuntimeConfig {
        snapshot_every: 3,
        ..Default::default()
    });
    rt.execute("a", Cmd::Add(1), meta("2")).await.unwrap();
    rt.execute("a", Cmd::Add(1), meta("3")).await.unwrap();
    let events = read_whole_stream(f.journal.as_ref(), &StreamId::new("counter", "a"), 1, 10)
        .await
        .unwrap();
    let stamps: Vec<i64> = events.iter().map(|e| e.metadata.timestamp_ms).collect();
    assert!(stamps.is_sorted(), "stamps went back: {stamps:?}");
    let snapshot = f
        .journal
        .latest_snapshot(&StreamId::new("counter", "a"), u64::MAX)
        .await
        .unwrap()
        .expect("a snapshot at 3");
    assert!(snapshot.timestamp_ms >= ahead, "{snapshot:?}");
    // Between the two clocks: nothing had happened yet, by the history's own order.
    let between = rt
        .state_at("a", u64::MAX, Some(ahead - 30_000))
        .await
        .unwrap();
    assert_eq!(between, (Counter::default(), 0));
    let after = rt.state_at("a", u64::MAX, Some(i64::MAX)).await.unwrap();
    assert_eq!(
        after,
        (
            Counter {
                value: 3,
                events: 3
            },
            3
        )
    );
}
