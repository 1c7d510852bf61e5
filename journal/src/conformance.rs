//! The conformance suite every [`Journal`] backend must pass.
//!
//! A backend's tests invoke [`journal_conformance_suite!`](crate::journal_conformance_suite) with
//! an expression that makes a fresh, empty journal (and a guard that cleans it up when dropped):
//!
//! ```text
//! async fn fresh() -> (Arc<dyn Journal>, TempDir) { ... }
//! kiroku_journal::journal_conformance_suite!(fresh());
//! ```
//!
//! The cases follow Akka's persistence plugin TCK (replay ranges, bounds, limits, atomic batches,
//! highest sequence number kept after deletion) and add what kiroku relies on: typed conflicts,
//! idempotent command ids scoped by principal, concurrent appenders, snapshots and the global order.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::{
    AppendOutcome, AppendRequest, CommandOutcome, CommandRecord, EventMetadata, Journal,
    JournalError, NewEvent, SnapshotRecord, StreamId, read_whole_stream,
};

/// Generates one `#[tokio::test]` per conformance case, each on a fresh journal from `$make`.
#[macro_export]
macro_rules! journal_conformance_suite {
    ($make:expr) => {
        $crate::journal_conformance_suite!(@cases $make;
            empty_journal_has_nothing,
            replays_all_events_in_order,
            replays_from_a_lower_bound,
            replays_to_an_upper_bound,
            replays_with_a_count_limit,
            replays_with_bounds_and_limit,
            replays_one_event_when_bounds_are_equal,
            replays_nothing_with_limit_zero,
            replays_nothing_when_lower_exceeds_upper,
            replays_nothing_for_an_unknown_stream,
            replay_pages_through_a_long_stream,
            envelope_keeps_every_field,
            streams_are_isolated,
            batches_are_atomic_and_contiguous,
            wrong_expected_version_is_a_typed_conflict_and_writes_nothing,
            deleted_events_are_not_replayed,
            highest_sequence_survives_deleting_everything,
            resent_command_id_appends_nothing_and_returns_original,
            command_ids_are_scoped_by_principal,
            empty_append_records_the_command,
            rejections_are_recorded_once,
            a_rejection_decided_on_a_stale_version_is_not_recorded,
            concurrent_appenders_never_interleave,
            snapshots_keep_the_latest,
            global_order_is_commit_order
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (journal, _guard) = $make.await;
                $crate::conformance::$case(journal).await;
            }
        )*
    };
}

pub type J = Arc<dyn Journal>;

pub fn event(n: u64) -> NewEvent {
    NewEvent {
        event_type: "test.Event".into(),
        schema_version: 1,
        payload: n.to_le_bytes().to_vec(),
    }
}

pub fn metadata(command_id: &str) -> EventMetadata {
    EventMetadata {
        command_id: command_id.into(),
        correlation_id: format!("corr-{command_id}"),
        causation_id: format!("cause-{command_id}"),
        principal: "ann".into(),
        timestamp_ms: 1_700_000_000_000,
    }
}

/// `count` events for `stream` at `expected`, sent as command `command_id` by `ann`.
pub fn request(stream: &StreamId, expected: u64, count: u64, command_id: &str) -> AppendRequest {
    AppendRequest {
        stream: stream.clone(),
        expected_sequence: expected,
        events: (expected + 1..=expected + count).map(event).collect(),
        metadata: metadata(command_id),
    }
}

fn unique_stream(name: &str) -> StreamId {
    StreamId::new("test", format!("{name}-{}", uuid::Uuid::new_v4()))
}

/// A stream with events 1..=5, appended as batches of 2, 1 and 2.
async fn five(j: &J) -> StreamId {
    let s = unique_stream("five");
    j.append(request(&s, 0, 2, &format!("{s}-a")))
        .await
        .unwrap();
    j.append(request(&s, 2, 1, &format!("{s}-b")))
        .await
        .unwrap();
    j.append(request(&s, 3, 2, &format!("{s}-c")))
        .await
        .unwrap();
    s
}

async fn sequences(j: &J, s: &StreamId, from: u64, to: u64, limit: usize) -> Vec<u64> {
    let events = j.read_stream(s, from, to, limit).await.unwrap();
    for e in &events {
        assert_eq!(
            e.payload,
            e.sequence.to_le_bytes(),
            "payload belongs to its sequence number"
        );
    }
    events.iter().map(|e| e.sequence).collect()
}

pub async fn empty_journal_has_nothing(j: J) {
    let s = unique_stream("empty");
    assert_eq!(j.highest_sequence(&s).await.unwrap(), 0);
    assert!(
        j.read_stream(&s, 1, u64::MAX, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(j.latest_snapshot(&s, u64::MAX).await.unwrap().is_none());
    assert!(j.command_record("ann", "nope").await.unwrap().is_none());
}

pub async fn replays_all_events_in_order(j: J) {
    let s = five(&j).await;
    assert_eq!(sequences(&j, &s, 1, u64::MAX, 100).await, [1, 2, 3, 4, 5]);
    assert_eq!(j.highest_sequence(&s).await.unwrap(), 5);
}

pub async fn replays_from_a_lower_bound(j: J) {
    let s = five(&j).await;
    assert_eq!(sequences(&j, &s, 3, u64::MAX, 100).await, [3, 4, 5]);
}

pub async fn replays_to_an_upper_bound(j: J) {
    let s = five(&j).await;
    assert_eq!(sequences(&j, &s, 1, 3, 100).await, [1, 2, 3]);
}

pub async fn replays_with_a_count_limit(j: J) {
    let s = five(&j).await;
    assert_eq!(sequences(&j, &s, 1, u64::MAX, 3).await, [1, 2, 3]);
}

pub async fn replays_with_bounds_and_limit(j: J) {
    let s = five(&j).await;
    assert_eq!(sequences(&j, &s, 2, 5, 3).await, [2, 3, 4]);
    assert_eq!(sequences(&j, &s, 2, 3, 10).await, [2, 3]);
}

pub async fn replays_one_event_when_bounds_are_equal(j: J) {
    let s = five(&j).await;
    assert_eq!(sequences(&j, &s, 2, 2, 100).await, [2]);
}

pub async fn replays_nothing_with_limit_zero(j: J) {
    let s = five(&j).await;
    assert!(sequences(&j, &s, 1, u64::MAX, 0).await.is_empty());
}

pub async fn replays_nothing_when_lower_exceeds_upper(j: J) {
    let s = five(&j).await;
    assert!(sequences(&j, &s, 3, 2, 100).await.is_empty());
    assert!(sequences(&j, &s, 6, u64::MAX, 100).await.is_empty());
}

pub async fn replays_nothing_for_an_unknown_stream(j: J) {
    five(&j).await;
    let other = unique_stream("unknown");
    assert!(sequences(&j, &other, 1, u64::MAX, 100).await.is_empty());
    assert_eq!(j.highest_sequence(&other).await.unwrap(), 0);
}

pub async fn replay_pages_through_a_long_stream(j: J) {
    let s = unique_stream("long");
    let mut expected = 0;
    for i in 0..5 {
        j.append(request(&s, expected, 50, &format!("{s}-{i}")))
            .await
            .unwrap();
        expected += 50;
    }
    let all = read_whole_stream(j.as_ref(), &s, 1, 40).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=250).collect::<Vec<_>>()
    );
}

pub async fn envelope_keeps_every_field(j: J) {
    let s = unique_stream("fields");
    let mut req = request(&s, 0, 2, "fields-1");
    req.events[1] = NewEvent {
        event_type: "test.Other".into(),
        schema_version: 7,
        payload: vec![],
    };
    let outcome = j.append(req.clone()).await.unwrap();
    let events = j.read_stream(&s, 1, u64::MAX, 10).await.unwrap();
    assert_eq!(events.len(), 2);
    for (stored, sent) in events.iter().zip(&req.events) {
        assert_eq!(stored.stream, s);
        assert_eq!(stored.event_type, sent.event_type);
        assert_eq!(stored.schema_version, sent.schema_version);
        assert_eq!(stored.payload, sent.payload);
        assert_eq!(stored.metadata, req.metadata);
    }
    let record = CommandRecord {
        principal: "ann".into(),
        command_id: "fields-1".into(),
        stream: s.clone(),
        outcome: CommandOutcome::Succeeded {
            version: 2,
            first_sequence: 1,
            last_sequence: 2,
        },
        recorded_at_ms: req.metadata.timestamp_ms,
    };
    assert_eq!(outcome, AppendOutcome::Appended(record.clone()));
    assert_eq!(
        j.command_record("ann", "fields-1").await.unwrap(),
        Some(record)
    );
}

pub async fn streams_are_isolated(j: J) {
    let id = uuid::Uuid::new_v4().to_string();
    let a = StreamId::new("alpha", &id);
    let b = StreamId::new("beta", &id);
    j.append(request(&a, 0, 3, &format!("{id}-a")))
        .await
        .unwrap();
    j.append(request(&b, 0, 1, &format!("{id}-b")))
        .await
        .unwrap();
    assert_eq!(sequences(&j, &a, 1, u64::MAX, 10).await, [1, 2, 3]);
    assert_eq!(sequences(&j, &b, 1, u64::MAX, 10).await, [1]);
    assert_eq!(j.highest_sequence(&b).await.unwrap(), 1);
}

pub async fn batches_are_atomic_and_contiguous(j: J) {
    let s = unique_stream("atomic");
    j.append(request(&s, 0, 1, "atomic-1")).await.unwrap();
    // A batch whose first sequence number is taken must write none of its events.
    let err = j.append(request(&s, 0, 3, "atomic-2")).await.unwrap_err();
    assert!(matches!(err, JournalError::Conflict { .. }), "{err:?}");
    assert_eq!(sequences(&j, &s, 1, u64::MAX, 10).await, [1]);
    assert!(
        j.command_record("ann", "atomic-2").await.unwrap().is_none(),
        "a failed append records nothing"
    );
    j.append(request(&s, 1, 3, "atomic-3")).await.unwrap();
    assert_eq!(sequences(&j, &s, 1, u64::MAX, 10).await, [1, 2, 3, 4]);
}

pub async fn wrong_expected_version_is_a_typed_conflict_and_writes_nothing(j: J) {
    let s = five(&j).await;
    for expected in [0, 4, 6] {
        let err = j
            .append(request(&s, expected, 1, &format!("{s}-x{expected}")))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            JournalError::Conflict {
                stream: s.clone(),
                expected,
                actual: 5
            }
        );
    }
    assert_eq!(j.highest_sequence(&s).await.unwrap(), 5);
}

pub async fn deleted_events_are_not_replayed(j: J) {
    let s = five(&j).await;
    j.delete_up_to(&s, 3).await.unwrap();
    assert_eq!(sequences(&j, &s, 1, u64::MAX, 100).await, [4, 5]);
    assert_eq!(j.highest_sequence(&s).await.unwrap(), 5);
}

pub async fn highest_sequence_survives_deleting_everything(j: J) {
    let s = five(&j).await;
    j.delete_up_to(&s, u64::MAX).await.unwrap();
    assert!(sequences(&j, &s, 1, u64::MAX, 100).await.is_empty());
    assert_eq!(j.highest_sequence(&s).await.unwrap(), 5);
    // Sequence numbers are never reused.
    let err = j.append(request(&s, 0, 1, "reuse")).await.unwrap_err();
    assert!(
        matches!(err, JournalError::Conflict { actual: 5, .. }),
        "{err:?}"
    );
    j.append(request(&s, 5, 1, "after-delete")).await.unwrap();
    assert_eq!(sequences(&j, &s, 1, u64::MAX, 100).await, [6]);
}

pub async fn resent_command_id_appends_nothing_and_returns_original(j: J) {
    let s = unique_stream("idem");
    let command_id = format!("{s}-cmd");
    let first = j.append(request(&s, 0, 2, &command_id)).await.unwrap();
    let AppendOutcome::Appended(original) = first else {
        panic!("first append: {first:?}")
    };
    // Same id at the now-current version, at a stale version, even on another stream.
    for (stream, expected) in [
        (s.clone(), 2),
        (s.clone(), 0),
        (unique_stream("idem-other"), 0),
    ] {
        let again = j
            .append(request(&stream, expected, 1, &command_id))
            .await
            .unwrap();
        assert_eq!(again, AppendOutcome::Duplicate(original.clone()));
        assert_eq!(
            j.highest_sequence(&stream).await.unwrap(),
            if stream == s { 2 } else { 0 }
        );
    }
    assert_eq!(sequences(&j, &s, 1, u64::MAX, 10).await, [1, 2]);
}

pub async fn command_ids_are_scoped_by_principal(j: J) {
    let s = unique_stream("scoped");
    let command_id = format!("{s}-shared");
    j.append(request(&s, 0, 1, &command_id)).await.unwrap();
    let mut bob = request(&s, 1, 1, &command_id);
    bob.metadata.principal = "bob".into();
    let outcome = j.append(bob).await.unwrap();
    assert!(matches!(outcome, AppendOutcome::Appended(_)), "{outcome:?}");
    assert_eq!(j.highest_sequence(&s).await.unwrap(), 2);
    assert!(
        j.command_record("bob", &command_id)
            .await
            .unwrap()
            .is_some()
    );
    assert!(j.command_record("cy", &command_id).await.unwrap().is_none());
}

pub async fn empty_append_records_the_command(j: J) {
    let s = five(&j).await;
    let outcome = j
        .append(request(&s, 5, 0, &format!("{s}-noop")))
        .await
        .unwrap();
    assert_eq!(
        outcome.record().outcome,
        CommandOutcome::Succeeded {
            version: 5,
            first_sequence: 0,
            last_sequence: 0
        }
    );
    assert_eq!(j.highest_sequence(&s).await.unwrap(), 5);
    let err = j
        .append(request(&s, 4, 0, &format!("{s}-stale-noop")))
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::Conflict { .. }), "{err:?}");
}

pub async fn rejections_are_recorded_once(j: J) {
    let s = unique_stream("rejected");
    let record = |message: &str| CommandRecord {
        principal: "ann".into(),
        command_id: format!("{s}-r"),
        stream: s.clone(),
        outcome: CommandOutcome::Rejected {
            code: 9,
            message: message.into(),
        },
        recorded_at_ms: 1,
    };
    assert_eq!(
        j.record_rejection(record("first"), 0).await.unwrap(),
        record("first")
    );
    assert_eq!(
        j.record_rejection(record("second"), 0).await.unwrap(),
        record("first")
    );
    assert_eq!(
        j.command_record("ann", &format!("{s}-r")).await.unwrap(),
        Some(record("first"))
    );
    // A rejected command id stays decided: appending under it returns the rejection.
    let again = j
        .append(request(&s, 0, 1, &format!("{s}-r")))
        .await
        .unwrap();
    assert_eq!(again, AppendOutcome::Duplicate(record("first")));
    assert_eq!(j.highest_sequence(&s).await.unwrap(), 0);
}

/// A rejection decided on version 1 while the stream is at 2 came from stale memory: it is
/// refused with the real version and recorded nowhere, so the command can be decided again.
pub async fn a_rejection_decided_on_a_stale_version_is_not_recorded(j: J) {
    let s = unique_stream("stale-rejection");
    j.append(request(&s, 0, 2, &format!("{s}-a")))
        .await
        .unwrap();
    let rejection = CommandRecord {
        principal: "ann".into(),
        command_id: format!("{s}-r"),
        stream: s.clone(),
        outcome: CommandOutcome::Rejected {
            code: 9,
            message: "not a member".into(),
        },
        recorded_at_ms: 1,
    };
    let err = j.record_rejection(rejection.clone(), 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        j.command_record("ann", &format!("{s}-r")).await.unwrap(),
        None
    );
    // Decided again on the current version, the same command may now succeed.
    let appended = j
        .append(request(&s, 2, 1, &format!("{s}-r")))
        .await
        .unwrap();
    assert!(
        matches!(appended, AppendOutcome::Appended(_)),
        "{appended:?}"
    );
    // And a rejection decided on the current version is recorded.
    let current = CommandRecord {
        command_id: format!("{s}-r2"),
        ..rejection
    };
    assert_eq!(
        j.record_rejection(current.clone(), 3).await.unwrap(),
        current
    );
}

/// Eight writers race for the same stream, each re-reading the version after a conflict. Every
/// sequence number is won exactly once, and each event appears once.
pub async fn concurrent_appenders_never_interleave(j: J) {
    let s = unique_stream("race");
    let writers = 8;
    let per_writer = 10;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (j, s) = (j.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for n in 0..per_writer {
                let command_id = format!("{s}-w{w}-{n}");
                loop {
                    let expected = j.highest_sequence(&s).await.unwrap();
                    let mut req = request(&s, expected, 2, &command_id);
                    for e in &mut req.events {
                        e.payload = command_id.clone().into_bytes();
                    }
                    match j.append(req).await {
                        Ok(AppendOutcome::Appended(_)) => break,
                        Err(JournalError::Conflict { .. }) => conflicts += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = read_whole_stream(j.as_ref(), &s, 1, 1000).await.unwrap();
    let total = (writers * per_writer * 2) as u64;
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    // Each command's two events are adjacent: batches never interleave.
    let mut seen = BTreeSet::new();
    for pair in events.chunks(2) {
        assert_eq!(pair[0].payload, pair[1].payload, "a batch was split");
        assert!(
            seen.insert(pair[0].payload.clone()),
            "a command was appended twice"
        );
    }
    assert_eq!(seen.len(), writers * per_writer);
}

pub async fn snapshots_keep_the_latest(j: J) {
    let s = unique_stream("snap");
    let snap = |sequence: u64| SnapshotRecord {
        stream: s.clone(),
        sequence,
        timestamp_ms: sequence as i64,
        state: vec![sequence as u8; 3],
    };
    j.save_snapshot(snap(10)).await.unwrap();
    j.save_snapshot(snap(20)).await.unwrap();
    assert_eq!(
        j.latest_snapshot(&s, u64::MAX).await.unwrap(),
        Some(snap(20))
    );
    assert_eq!(j.latest_snapshot(&s, 5).await.unwrap(), None);
    let at_15 = j.latest_snapshot(&s, 15).await.unwrap();
    assert!(
        at_15.is_none() || at_15 == Some(snap(10)),
        "older snapshots are either kept or dropped: {at_15:?}"
    );
    assert!(
        j.latest_snapshot(&unique_stream("snap-other"), u64::MAX)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn global_order_is_commit_order(j: J) {
    if !j.has_global_order() {
        assert!(matches!(
            j.read_all(0, 10).await,
            Err(JournalError::Unsupported(_))
        ));
        return;
    }
    let start = j
        .read_all(0, usize::MAX)
        .await
        .unwrap()
        .last()
        .map_or(0, |e| e.global_position);
    let a = unique_stream("global-a");
    let b = unique_stream("global-b");
    j.append(request(&a, 0, 2, &format!("{a}-1")))
        .await
        .unwrap();
    j.append(request(&b, 0, 1, &format!("{b}-1")))
        .await
        .unwrap();
    j.append(request(&a, 2, 1, &format!("{a}-2")))
        .await
        .unwrap();
    let mut after = start;
    let mut seen = Vec::new();
    loop {
        let page = j.read_all(after, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        for e in &page {
            assert!(e.global_position > after, "positions strictly increase");
            after = e.global_position;
        }
        seen.extend(
            page.into_iter()
                .map(|e| (e.stream.aggregate_id, e.sequence)),
        );
    }
    let (a, b) = (a.aggregate_id, b.aggregate_id);
    assert_eq!(seen, [(a.clone(), 1), (a.clone(), 2), (b, 1), (a, 3)]);
}
