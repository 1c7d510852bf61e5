//! Children of finished shards: each is owed from its first record, so records trimmed before
//! the reader got to a child — the feed stood still for longer than the 24-hour retention after
//! the parent ended — are a loud error, never a silent skip; and a child read in time is read
//! whole, once, in order.

use super::*;

fn seq(n: u64) -> String {
    format!("{n:021}")
}

fn owed() -> ShardCheckpoint {
    ShardCheckpoint::default()
}

/// The parent is read to its end and the reader stops before the child. While it stands still,
/// the child's first record is trimmed. Reading the child from its trim horizon would start at
/// its second record; instead the read fails, naming the shard, its start, the oldest record
/// left and the remedy — through the same reader and after a restart alike.
#[tokio::test]
async fn a_child_whose_first_records_were_trimmed_while_the_reader_stood_still_is_a_loud_error() {
    let api = Arc::new(ScriptedStreams::default());
    api.open_shard("child", Some("parent"));
    api.open_shard("parent", None);
    api.append("parent", [event("p", 1), event("p", 2)]);
    api.close("parent");
    api.append("child", [event("p", 3), event("p", 4), event("p", 5)]);
    let reader = reader(&api);

    let first = reader.read(&StreamCheckpoints::default(), 2).await.unwrap();
    assert_eq!(names(&first.envelopes), ["p-1", "p-2"]);
    assert!(first.checkpoints.shards["parent"].finished);
    assert_eq!(
        first.checkpoints.shards.get("child"),
        Some(&owed()),
        "the child of a finished shard is recorded as owed from its first record"
    );

    api.trim("child", 1);
    let lost = StreamsError::ShardStartTrimmed {
        stream_arn: ARN.into(),
        shard_id: "child".into(),
        starting_sequence_number: Some(seq(3)),
        oldest_left: Some(seq(4)),
    };
    for reader in [reader.clone(), self::reader(&api)] {
        let err = reader.read(&first.checkpoints, 100).await.unwrap_err();
        assert_eq!(err, lost);
        let message = err.to_string();
        for part in [
            "child",
            &seq(3),
            &seq(4),
            "rebuild the read model from the journal",
        ] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
    }

    // The remedy: the feed restarts from empty checkpoints once the read model was rebuilt. By
    // then the parent is trimmed away; nothing was promised before the oldest record left.
    api.remove_shard("parent");
    let fresh = reader
        .read(&StreamCheckpoints::default(), 100)
        .await
        .unwrap();
    assert_eq!(names(&fresh.envelopes), ["p-4", "p-5"]);
}

/// The parent is read to its end, its child is recorded and the reader stops. While it stands
/// still, every record of the parent and of the child is trimmed: the stream lists neither, only
/// the grandchild. The grandchild's parent is unknown, which would make it readable and skip the
/// whole child; the recorded child is the same loud error instead.
#[tokio::test]
async fn a_recorded_child_the_stream_no_longer_lists_is_a_loud_error_not_a_skip_to_its_children() {
    let api = Arc::new(ScriptedStreams::default());
    api.open_shard("grandchild", Some("child"));
    api.open_shard("child", Some("parent"));
    api.open_shard("parent", None);
    api.append("parent", [event("v", 1)]);
    api.close("parent");
    api.append("child", [event("v", 2)]);
    api.close("child");
    api.append("grandchild", [event("v", 3)]);
    let reader = reader(&api);

    let first = reader.read(&StreamCheckpoints::default(), 1).await.unwrap();
    assert_eq!(names(&first.envelopes), ["v-1"]);
    assert_eq!(first.checkpoints.shards.get("child"), Some(&owed()));

    api.remove_shard("parent");
    api.remove_shard("child");
    let lost = StreamsError::ShardStartTrimmed {
        stream_arn: ARN.into(),
        shard_id: "child".into(),
        starting_sequence_number: None,
        oldest_left: None,
    };
    for reader in [reader.clone(), self::reader(&api)] {
        let err = reader.read(&first.checkpoints, 100).await.unwrap_err();
        assert_eq!(err, lost);
        let message = err.to_string();
        for part in [
            "child",
            "no longer lists",
            "rebuild the read model from the journal",
        ] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
    }
}

/// The parent was listed open and splits while it is being read: its children did not exist
/// when the shards were listed. The reader lists the shards again, so the child is recorded as
/// owed in the checkpoints it returns even when the read ends right there (a later loss of the
/// child is then detected like any other), and is read next.
#[tokio::test]
async fn a_shard_that_splits_during_a_read_has_its_children_recorded_before_the_read_returns() {
    let api = Arc::new(ScriptedStreams::default());
    api.open_shard("parent", None);
    api.append("parent", [event("s", 1), event("s", 2)]);
    api.open_shard("child", Some("parent"));
    api.append("child", [event("s", 3)]);
    api.hide("child");
    api.split_on_get_records(1, "parent");
    let reader = reader(&api);

    let first = reader.read(&StreamCheckpoints::default(), 2).await.unwrap();
    assert_eq!(names(&first.envelopes), ["s-1", "s-2"]);
    assert!(first.checkpoints.shards["parent"].finished);
    assert_eq!(first.checkpoints.shards.get("child"), Some(&owed()));

    let next = reader.read(&first.checkpoints, 100).await.unwrap();
    assert_eq!(names(&next.envelopes), ["s-3"]);
}

/// Nothing trimmed, three generations, a fresh reader for every call (a restarting process) and
/// one envelope per call: everything is read once, in order, each child after its parent. One
/// child's `StartingSequenceNumber` lies below its first record (the service only promises a
/// lower bound): the service confirms its start is not trimmed, and it is read whole too.
#[tokio::test]
async fn children_read_after_their_parents_with_nothing_trimmed_are_read_whole_once_and_in_order() {
    let api = Arc::new(ScriptedStreams::default());
    api.open_shard("c", Some("b"));
    api.open_shard("b", Some("a"));
    api.open_shard("a", None);
    api.append("a", [event("n", 1), event("n", 2)]);
    api.close("a");
    api.empty_pages("b", 1);
    api.append("b", [event("n", 3), head("n", 3), event("n", 4)]);
    api.close("b");
    api.starts_at("c", &seq(1));
    api.append("c", [event("n", 5)]);
    let expected = ["n-1", "n-2", "n-3", "n-4", "n-5"];

    let (mut at, mut seen) = (StreamCheckpoints::default(), Vec::new());
    for _ in 0..12 {
        let batch = reader(&api).read(&at, 1).await.unwrap();
        seen.extend(names(&batch.envelopes));
        at = batch.checkpoints;
    }
    assert_eq!(seen, expected, "nothing lost or repeated");
    assert!(at.shards["b"].finished);
    assert_eq!(at.shards["c"].last_sequence_number, Some(seq(6)));

    // In one call: one iterator per shard, plus one `AT_SEQUENCE_NUMBER` check for the child
    // whose first record is above its start.
    let before = api.calls("GetShardIterator");
    let all = reader(&api)
        .read(&StreamCheckpoints::default(), 100)
        .await
        .unwrap();
    assert_eq!(names(&all.envelopes), expected);
    assert_eq!(all.checkpoints, at);
    assert_eq!(api.calls("GetShardIterator") - before, 4);
}
