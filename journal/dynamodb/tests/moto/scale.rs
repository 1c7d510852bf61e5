//! Volume and management: replays beyond DynamoDB's 1 MB page, idempotent table creation, the
//! Streams reader, snapshot retention.

use kiroku_journal::conformance::request;
use kiroku_journal::{Journal, SnapshotRecord, StreamId};
use kiroku_journal_dynamodb::{DynamoDbConfig, DynamoDbJournal, StreamCheckpoints, StreamsReader};

use crate::support;

fn stream(name: &str) -> StreamId {
    StreamId::new("test", format!("{name}-{}", uuid::Uuid::new_v4()))
}

/// 1.6 MB of events in one stream: a Query page stops at 1 MB, the replay follows
/// `LastEvaluatedKey` and returns every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_over_one_megabyte_returns_every_event() {
    let (journal, _tables) = support::journal().await;
    let s = stream("heavy");
    let per_event = 100 * 1024;
    let mut expected = 0;
    for batch in 0..4 {
        let mut req = request(&s, expected, 4, &format!("heavy-{batch}"));
        for (i, e) in req.events.iter_mut().enumerate() {
            e.payload = vec![(expected + 1 + i as u64) as u8; per_event];
        }
        journal.append(req).await.unwrap();
        expected += 4;
    }
    let before = journal.request_counts();
    let events = journal
        .read_stream(&s, 1, u64::MAX, usize::MAX)
        .await
        .unwrap();
    let queries = journal.request_counts().since(&before).operation("Query");
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=16).collect::<Vec<_>>()
    );
    for e in &events {
        assert_eq!(e.payload.len(), per_event);
        assert!(
            e.payload.iter().all(|b| *b == e.sequence as u8),
            "payload of {}",
            e.sequence
        );
    }
    assert!(
        queries >= 2,
        "{:.1} MB must take several pages, took {queries}",
        (16 * per_event) as f64 / 1e6
    );
    // A bounded read still stops at its limit.
    let first = journal.read_stream(&s, 3, u64::MAX, 5).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [3, 4, 5, 6, 7]
    );
}

/// `init_tables` creates the three tables once; a second call (as `kiroku journal init` run
/// again, or a second replica starting) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_tables_is_idempotent() {
    let config = support::config();
    let _tables = support::Tables {
        config: config.clone(),
    };
    let journal = DynamoDbJournal::connect(config.clone()).await.unwrap();
    let first = journal.init_tables().await.unwrap();
    assert_eq!(first.created, config.table_names().to_vec());
    assert!(first.existing.is_empty());
    let s = stream("init");
    journal.append(request(&s, 0, 2, "init-1")).await.unwrap();

    // A second process, configured by url as `kiroku journal init` is.
    let url = format!(
        "dynamodb://?endpoint={}&region=us-east-1&prefix={}",
        support::endpoint(),
        config.table_prefix
    );
    let again = DynamoDbJournal::from_url(&url).await.unwrap();
    let second = again.init_tables().await.unwrap();
    assert!(second.created.is_empty(), "{second:?}");
    assert_eq!(second.existing, config.table_names().to_vec());
    assert_eq!(again.highest_sequence(&s).await.unwrap(), 2, "data kept");
    assert!(
        again
            .events_stream_arn()
            .await
            .unwrap()
            .contains(&config.events_table())
    );
}

/// The Streams reader returns appended events as envelopes, per aggregate in order, resumes from
/// its checkpoints without repeating anything, and skips stream heads and deletions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_reader_returns_events_in_order_from_checkpoints() {
    let (journal, _tables) = support::journal().await;
    let reader = StreamsReader::new(&journal).await.unwrap();
    let (a, b) = (stream("feed-a"), stream("feed-b"));
    journal.append(request(&a, 0, 2, "feed-a1")).await.unwrap();
    journal.append(request(&b, 0, 1, "feed-b1")).await.unwrap();
    journal.append(request(&a, 2, 3, "feed-a2")).await.unwrap();

    let first = reader
        .read(&StreamCheckpoints::default(), 1000)
        .await
        .unwrap();
    let seen = |batch: &[kiroku_journal::Envelope], s: &StreamId| -> Vec<u64> {
        batch
            .iter()
            .filter(|e| &e.stream == s)
            .map(|e| e.sequence)
            .collect()
    };
    assert_eq!(seen(&first.envelopes, &a), [1, 2, 3, 4, 5]);
    assert_eq!(seen(&first.envelopes, &b), [1]);
    assert_eq!(first.envelopes.len(), 6, "heads are not events");
    let stored = journal.read_stream(&a, 1, u64::MAX, 10).await.unwrap();
    assert_eq!(
        &first
            .envelopes
            .iter()
            .filter(|e| e.stream == a)
            .cloned()
            .collect::<Vec<_>>(),
        &stored
    );

    // Nothing new: nothing returned, checkpoints unchanged.
    let idle = reader.read(&first.checkpoints, 1000).await.unwrap();
    assert!(idle.envelopes.is_empty(), "{:?}", idle.envelopes);

    journal.append(request(&b, 1, 2, "feed-b2")).await.unwrap();
    journal.delete_up_to(&a, 2).await.unwrap();
    let next = reader.read(&idle.checkpoints, 1000).await.unwrap();
    assert_eq!(seen(&next.envelopes, &b), [2, 3]);
    assert!(
        seen(&next.envelopes, &a).is_empty(),
        "deletions are not events"
    );

    // A small budget hands out a prefix, and the rest follows from its checkpoints.
    let (c, mut all) = (stream("feed-c"), Vec::new());
    journal.append(request(&c, 0, 5, "feed-c1")).await.unwrap();
    let mut at = next.checkpoints;
    loop {
        let page = reader.read(&at, 2).await.unwrap();
        if page.envelopes.is_empty() {
            break;
        }
        all.extend(page.envelopes);
        at = page.checkpoints;
    }
    assert_eq!(seen(&all, &c), [1, 2, 3, 4, 5]);
}

/// Snapshots keep the newest `snapshots_to_keep` per stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_keep_the_configured_number() {
    let config = DynamoDbConfig {
        snapshots_to_keep: 2,
        ..support::config()
    };
    let (journal, _tables) = support::journal_with(config).await;
    let s = stream("snaps");
    for sequence in [10, 20, 30] {
        journal
            .save_snapshot(SnapshotRecord {
                stream: s.clone(),
                sequence,
                timestamp_ms: sequence as i64,
                state: vec![sequence as u8],
            })
            .await
            .unwrap();
    }
    let at = |max| {
        let journal = journal.clone();
        let s = s.clone();
        async move {
            journal
                .latest_snapshot(&s, max)
                .await
                .unwrap()
                .map(|r| r.sequence)
        }
    };
    assert_eq!(at(u64::MAX).await, Some(30));
    assert_eq!(at(25).await, Some(20));
    assert_eq!(at(15).await, None, "the oldest was dropped");
}

/// The cost model the write side relies on, as counts (never timings): a resident aggregate's
/// command is one TransactWriteItems and no read; a cold activation is two Queries (snapshot,
/// tail) when the tail fits in one page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_command_are_one_write_and_no_read() {
    let (journal, _tables) = support::journal().await;
    let report = kiroku_journal_dynamodb::bench::bench_appends(&journal, 4, 5)
        .await
        .unwrap();
    assert_eq!(report.commands, 20);
    assert_eq!(
        report.requests.operation("TransactWriteItems"),
        20,
        "{report}"
    );
    assert_eq!(report.requests.reads(), 0, "{report}");
    let cold = kiroku_journal_dynamodb::bench::bench_cold_activation(&journal, 3, 5)
        .await
        .unwrap();
    assert_eq!(cold.requests.operation("Query"), 6, "{cold}");
    assert_eq!(cold.requests.total, 6, "{cold}");
}

/// Two replicas starting at once both run `init_tables`: each table is created exactly once and
/// both succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_init_tables_create_each_table_once() {
    let config = support::config();
    let _tables = support::Tables {
        config: config.clone(),
    };
    let a = DynamoDbJournal::connect(config.clone()).await.unwrap();
    let b = DynamoDbJournal::connect(config.clone()).await.unwrap();
    let (ra, rb) = tokio::join!(a.init_tables(), b.init_tables());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut created: Vec<String> = ra.created.iter().chain(&rb.created).cloned().collect();
    created.sort();
    let mut expected = config.table_names().to_vec();
    expected.sort();
    assert_eq!(created, expected, "{ra:?} {rb:?}");
}
