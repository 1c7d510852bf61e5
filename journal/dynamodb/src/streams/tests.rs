//! The reader against a scripted Streams service (`scripted.rs`): what DynamoDB documents and
//! moto never does — empty pages before records, shards that close and split, trimmed
//! checkpoints, expired iterators. Records carry real event items, so envelopes come back as the
//! journal wrote them.

use std::time::Duration;

use kiroku_journal::{EventMetadata, NewEvent, StreamId};

use super::scripted::ScriptedStreams;
use super::*;

mod children;
use crate::items::{HEAD, Item};

const ARN: &str = "arn:aws:dynamodb:us-east-1:000000000000:table/events/stream/scripted";

fn reader(api: &Arc<ScriptedStreams>) -> StreamsReader {
    let retry = RetryPolicy {
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        ..RetryPolicy::default()
    };
    StreamsReader::with_api(api.clone(), retry, "events".into(), ARN.into())
}

fn stream(aggregate: &str) -> StreamId {
    StreamId::new("room", aggregate)
}

/// The item the journal writes for event `sequence` of `aggregate`.
fn event(aggregate: &str, sequence: u64) -> Option<Item> {
    let event = NewEvent {
        event_type: "MessagePosted".into(),
        schema_version: 1,
        payload: vec![sequence as u8],
    };
    let meta = EventMetadata {
        command_id: format!("{aggregate}-{sequence}"),
        ..EventMetadata::default()
    };
    Some(items::event_item(
        &stream(aggregate),
        sequence,
        &event,
        &meta,
    ))
}

/// The stream head of `aggregate` at `head` (updated by every append; never an event).
fn head(aggregate: &str, head: u64) -> Option<Item> {
    let mut item = items::head_key(&stream(aggregate));
    item.insert(HEAD.into(), items::n(head));
    Some(item)
}

fn names(envelopes: &[Envelope]) -> Vec<String> {
    envelopes
        .iter()
        .map(|e| format!("{}-{}", e.stream.aggregate_id, e.sequence))
        .collect()
}

/// AWS answers empty pages on an open shard before its records appear. The reader follows
/// `NextShardIterator` through them, a bounded number per call, and keeps the iterator so the
/// next call goes on from there instead of asking for the same empty page again.
#[tokio::test]
async fn empty_pages_on_an_open_shard_are_followed_until_records_appear() {
    let api = Arc::new(ScriptedStreams::default());
    api.open_shard("s0", None);
    api.empty_pages("s0", 3);
    api.append("s0", [event("a", 1), event("a", 2)]);
    let reader = reader(&api);

    let first = reader
        .read(&StreamCheckpoints::default(), 100)
        .await
        .unwrap();
    assert_eq!(names(&first.envelopes), ["a-1", "a-2"]);
    let s0 = &first.checkpoints.shards["s0"];
    assert_eq!(
        s0.last_sequence_number.as_deref(),
        Some("000000000000000000002")
    );
    assert!(!s0.finished, "an open shard is never finished");

    // More empty stretches than one call follows: each call gets further, and the record comes.
    api.empty_pages("s0", 2 * MAX_EMPTY_PAGES + 1);
    api.append("s0", [event("a", 3)]);
    let (mut at, mut seen, mut calls) = (first.checkpoints.clone(), Vec::new(), 0);
    while seen.is_empty() && calls < 10 {
        let before = api.calls("GetRecords");
        let batch = reader.read(&at, 100).await.unwrap();
        let pages = api.calls("GetRecords") - before;
        assert!(
            pages <= MAX_EMPTY_PAGES + 1,
            "{pages} GetRecords in one call"
        );
        seen.extend(names(&batch.envelopes));
        at = batch.checkpoints;
        calls += 1;
    }
    assert_eq!(seen, ["a-3"]);
    assert!(calls <= 3, "took {calls} calls");
    assert_eq!(
        api.calls("GetShardIterator"),
        1,
        "the iterator is kept between calls, never asked for again"
    );

    // Caught up: nothing returned, checkpoints unchanged — also for a reader without a kept
    // iterator (after a restart).
    for reader in [reader.clone(), self::reader(&api)] {
        let idle = reader.read(&at, 100).await.unwrap();
        assert!(idle.envelopes.is_empty(), "{:?}", names(&idle.envelopes));
        assert_eq!(idle.checkpoints, at);
    }
}

/// A closed parent with two children: the parent is read through its empty stretch to its end
/// (null `NextShardIterator`) and only then are the children read, each in order — with a large
/// budget in one call, and one envelope per call alike. `DescribeStream` is paginated and lists a
/// child before its parent.
#[tokio::test]
async fn a_closed_parent_is_read_to_its_end_before_its_two_children() {
    let api = Arc::new(ScriptedStreams::default());
    api.describe_page_size(1);
    api.open_shard("child-a", Some("parent"));
    api.open_shard("parent", None);
    api.open_shard("child-b", Some("parent"));
    api.append("parent", [event("p", 1), head("p", 1), event("p", 2)]);
    api.empty_pages("parent", 2);
    api.append("parent", [event("p", 3), None]);
    api.close("parent");
    api.append("child-a", [event("p", 4), event("a", 1)]);
    api.append("child-b", [event("b", 1)]);
    api.close("child-b");
    let expected = ["p-1", "p-2", "p-3", "b-1", "p-4", "a-1"];

    let all = reader(&api)
        .read(&StreamCheckpoints::default(), 100)
        .await
        .unwrap();
    assert_eq!(names(&all.envelopes), expected);
    let shards = &all.checkpoints.shards;
    assert!(shards["parent"].finished);
    assert!(shards["child-b"].finished, "closed and read to its end");
    assert!(!shards["child-a"].finished, "still open");

    let (reader, mut at, mut seen) = (reader(&api), StreamCheckpoints::default(), Vec::new());
    for _ in 0..20 {
        let batch = reader.read(&at, 1).await.unwrap();
        assert!(batch.envelopes.len() <= 1);
        for name in names(&batch.envelopes) {
            if !name.starts_with("p-") || name == "p-4" {
                assert!(
                    at.shards.get("parent").is_some_and(|c| c.finished)
                        || batch.checkpoints.shards["parent"].finished,
                    "{name} read before the parent was finished"
                );
            }
            seen.push(name);
        }
        at = batch.checkpoints;
    }
    assert_eq!(seen, expected, "nothing lost or repeated");
    assert_eq!(at, all.checkpoints);
}

/// A checkpoint older than the 24-hour retention: the records after it are gone, so the read
/// fails with the specific error naming the shard, the checkpoint and the remedy — through the
/// kept iterator and from a fresh reader alike — instead of going on at the oldest record left.
/// A shard the stream no longer lists, with an unfinished checkpoint, is the same loss.
#[tokio::test]
async fn a_checkpoint_older_than_the_retention_is_a_loud_specific_error() {
    let api = Arc::new(ScriptedStreams::default());
    api.open_shard("s0", None);
    api.append("s0", [event("x", 1), event("x", 2), event("x", 3)]);
    let reader = reader(&api);
    let first = reader.read(&StreamCheckpoints::default(), 1).await.unwrap();
    assert_eq!(names(&first.envelopes), ["x-1"]);
    let checkpoint = first.checkpoints.shards["s0"]
        .last_sequence_number
        .clone()
        .unwrap();

    api.trim("s0", 2);
    let lost = StreamsError::CheckpointTrimmed {
        stream_arn: ARN.into(),
        shard_id: "s0".into(),
        checkpoint: checkpoint.clone(),
    };
    for reader in [reader.clone(), self::reader(&api)] {
        let err = reader.read(&first.checkpoints, 100).await.unwrap_err();
        assert_eq!(err, lost);
        let message = err.to_string();
        for part in ["s0", &checkpoint, "rebuild the read model from the journal"] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
    }
    // A reader that never had a checkpoint starts at the oldest record there is.
    let fresh = reader
        .read(&StreamCheckpoints::default(), 100)
        .await
        .unwrap();
    assert_eq!(names(&fresh.envelopes), ["x-3"]);

    // Every record of the shard trimmed: the stream lists it no longer. A finished checkpoint
    // of such a shard is dropped; an unfinished one is a loss.
    let mut gone = first.checkpoints.clone();
    gone.shards.insert(
        "old".into(),
        ShardCheckpoint {
            last_sequence_number: Some("7".into()),
            finished: true,
        },
    );
    api.remove_shard("s0");
    assert_eq!(reader.read(&gone, 100).await.unwrap_err(), lost);
    gone.shards.remove("s0");
    let pruned = reader.read(&gone, 100).await.unwrap();
    assert!(pruned.checkpoints.shards.is_empty(), "{pruned:?}");
}

/// Iterators expire after 15 minutes — in the middle of a call, or between two calls while
/// the kept iterator waits. Either is renewed from the checkpoint: nothing lost, nothing twice.
#[tokio::test]
async fn an_expired_iterator_is_renewed_from_the_checkpoint_without_loss_or_duplicates() {
    let api = Arc::new(ScriptedStreams::default());
    api.open_shard("s0", None);
    api.append("s0", [event("e", 1), event("e", 2), event("e", 3)]);
    api.empty_pages("s0", 1);
    api.append("s0", [event("e", 4), event("e", 5)]);
    let reader = reader(&api);

    api.expire_on_get_records(2);
    let first = reader
        .read(&StreamCheckpoints::default(), 100)
        .await
        .unwrap();
    assert_eq!(names(&first.envelopes), ["e-1", "e-2", "e-3", "e-4", "e-5"]);
    assert_eq!(api.calls("GetShardIterator"), 2, "renewed once");

    api.append("s0", [event("e", 6)]);
    api.expire_iterators();
    let second = reader.read(&first.checkpoints, 100).await.unwrap();
    assert_eq!(names(&second.envelopes), ["e-6"]);
    assert_eq!(api.calls("GetShardIterator"), 3, "renewed once more");
}

/// After a split, children wait until the parent is drained; a trimmed parent does not block.
#[test]
fn parents_are_read_before_children() {
    let shard = |id: &str, parent: Option<&str>| ShardInfo {
        id: id.into(),
        parent: parent.map(Into::into),
        closed: false,
        starting_sequence_number: None,
    };
    let finished = |ids: &[&str]| StreamCheckpoints {
        shards: ids
            .iter()
            .map(|id| {
                let done = ShardCheckpoint {
                    last_sequence_number: Some("1".into()),
                    finished: true,
                };
                (id.to_string(), done)
            })
            .collect(),
    };
    let shards = [
        shard("child-a", Some("parent")),
        shard("parent", None),
        shard("child-b", Some("parent")),
        shard("orphan", Some("trimmed")),
    ];
    let known: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
    let readable_ids = |checkpoints: &StreamCheckpoints| -> Vec<String> {
        shards
            .iter()
            .filter(|s| {
                let state = checkpoints.shards.get(&s.id).cloned().unwrap_or_default();
                readable(s, &state, &known, checkpoints)
            })
            .map(|s| s.id.clone())
            .collect()
    };
    assert_eq!(
        readable_ids(&StreamCheckpoints::default()),
        ["parent", "orphan"]
    );
    assert_eq!(
        readable_ids(&finished(&["parent"])),
        ["child-a", "child-b", "orphan"]
    );
    let all = finished(&["parent", "child-a", "child-b", "orphan"]);
    assert!(readable_ids(&all).is_empty());
}
