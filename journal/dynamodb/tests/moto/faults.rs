//! Bad input and faults: racing clients, lost responses, an unreachable server, oversized events.

use std::time::{Duration, Instant};

use kiroku_journal::conformance::request;
use kiroku_journal::{AppendOutcome, Journal, JournalError, NewEvent, StreamId};
use kiroku_journal_dynamodb::{
    DynamoDbConfig, DynamoDbJournal, MAX_EVENTS_PER_APPEND, RetryPolicy,
};

use crate::proxy::FaultProxy;
use crate::support;

fn stream(name: &str) -> StreamId {
    StreamId::new("test", format!("{name}-{}", uuid::Uuid::new_v4()))
}

/// Two clients (separate SDK clients and connection pools, as two processes would have) race for
/// the same version, round after round: exactly one wins each time, the loser gets a typed
/// conflict naming the winner's version, and the history is each winner's batch once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_racing_for_one_aggregate_never_interleave() {
    let (a, _tables) = support::journal().await;
    let b = DynamoDbJournal::connect(a.config().clone()).await.unwrap();
    let s = stream("race");
    let mut version = 0;
    let mut winners = Vec::new();
    for round in 0..15 {
        let (ra, rb) = (
            tagged(&s, version, 2, &format!("a-{round}")),
            tagged(&s, version, 3, &format!("b-{round}")),
        );
        let (x, y) = tokio::join!(a.append(ra), b.append(rb));
        let (won, lost, count) = match (x, y) {
            (Ok(AppendOutcome::Appended(w)), Err(e)) => (w, e, 2),
            (Err(e), Ok(AppendOutcome::Appended(w))) => (w, e, 3),
            other => panic!("round {round}: exactly one must win: {other:?}"),
        };
        assert_eq!(
            lost,
            JournalError::Conflict {
                stream: s.clone(),
                expected: version,
                actual: version + count
            },
            "round {round}"
        );
        version += count;
        winners.push((won.command_id, count));
    }
    let events = kiroku_journal::read_whole_stream(&a, &s, 1, 100)
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=version).collect::<Vec<_>>()
    );
    let mut at = 0;
    for (command_id, count) in winners {
        for e in &events[at..at + count as usize] {
            assert_eq!(
                e.metadata.command_id, command_id,
                "a batch was split or interleaved"
            );
        }
        at += count as usize;
    }
    assert_eq!(b.highest_sequence(&s).await.unwrap(), version);
}

fn tagged(
    s: &StreamId,
    expected: u64,
    count: u64,
    command_id: &str,
) -> kiroku_journal::AppendRequest {
    let mut req = request(s, expected, count, command_id);
    req.metadata.principal = "racer".into();
    req
}

/// The append reaches the server and is applied, but its response is lost on the way back. The
/// journal retries the same transaction and recognises the stored command record as its own:
/// the caller gets `Appended` once, nothing is written twice, and a later resend of the command
/// is a `Duplicate` with the original record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_response_is_retried_without_a_duplicate() {
    let proxy = FaultProxy::start(&support::endpoint()).await;
    let (journal, _tables) = support::journal_with(support::config_for(&proxy.endpoint())).await;
    let s = stream("lost");
    journal.append(request(&s, 0, 1, "lost-0")).await.unwrap();

    let before = journal.request_counts();
    proxy.drop_next_responses(1);
    let outcome = journal.append(request(&s, 1, 2, "lost-1")).await.unwrap();
    let AppendOutcome::Appended(record) = outcome else {
        panic!("our own write, recognised: {outcome:?}")
    };
    let spent = journal.request_counts().since(&before);
    assert!(
        spent.operation("TransactWriteItems") >= 2,
        "the append was retried: {spent:?}"
    );

    let events = journal.read_stream(&s, 1, u64::MAX, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(journal.highest_sequence(&s).await.unwrap(), 3);

    // The client resends the command after the lost response: the original result, no append.
    let again = journal.append(request(&s, 1, 2, "lost-1")).await.unwrap();
    assert_eq!(again, AppendOutcome::Duplicate(record));
    assert_eq!(journal.highest_sequence(&s).await.unwrap(), 3);
}

/// HTTP 500s and throttling are retried with backoff: the append succeeds once the server
/// answers normally, and the retries show in the request count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_throttling_are_retried() {
    let proxy = FaultProxy::start(&support::endpoint()).await;
    let (journal, _tables) = support::journal_with(support::config_for(&proxy.endpoint())).await;
    let s = stream("flaky");
    proxy.answer_next_with(&[
        (500, "InternalServerError"),
        (400, "ProvisionedThroughputExceededException"),
        (400, "ThrottlingException"),
    ]);
    proxy.go_down().await; // pooled connections closed: the next requests open new ones
    proxy.come_back().await;
    let before = journal.request_counts();
    let outcome = journal.append(request(&s, 0, 2, "flaky-1")).await.unwrap();
    assert!(matches!(outcome, AppendOutcome::Appended(_)), "{outcome:?}");
    let spent = journal.request_counts().since(&before);
    assert_eq!(spent.operation("TransactWriteItems"), 4, "{spent:?}");
    assert_eq!(journal.highest_sequence(&s).await.unwrap(), 2);

    // A permanent error is not retried and surfaces as a storage error.
    proxy.answer_next_with(&[(400, "ValidationException")]);
    proxy.go_down().await;
    proxy.come_back().await;
    let before = journal.request_counts();
    let err = journal
        .append(request(&s, 2, 1, "flaky-2"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, JournalError::Storage(ref m) if m.contains("ValidationException")),
        "{err:?}"
    );
    assert_eq!(journal.request_counts().since(&before).total, 1);
}

fn impatient(endpoint: &str) -> DynamoDbConfig {
    DynamoDbConfig {
        retry: RetryPolicy {
            max_attempts: 4,
            attempt_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(300),
            deadline: Duration::from_secs(5),
            ..RetryPolicy::default()
        },
        ..support::config_for(endpoint)
    }
}

/// The server goes away: appends and reads fail with `Unavailable` after bounded retries, nothing
/// is half-written, and the same journal works again once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable_then_recovers() {
    let proxy = FaultProxy::start(&support::endpoint()).await;
    let (journal, _tables) = support::journal_with(impatient(&proxy.endpoint())).await;
    let s = stream("down");
    journal.append(request(&s, 0, 1, "down-0")).await.unwrap();

    proxy.go_down().await;
    let started = Instant::now();
    let err = journal
        .append(request(&s, 1, 2, "down-1"))
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::Unavailable(_)), "{err:?}");
    let err = journal.highest_sequence(&s).await.unwrap_err();
    assert!(matches!(err, JournalError::Unavailable(_)), "{err:?}");
    // A liveness bound (the deadline is 5 s per request), not a benchmark.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );

    proxy.come_back().await;
    assert_eq!(
        journal.highest_sequence(&s).await.unwrap(),
        1,
        "nothing half-written"
    );
    assert!(
        journal
            .command_record("ann", "down-1")
            .await
            .unwrap()
            .is_none()
    );
    let outcome = journal.append(request(&s, 1, 2, "down-1")).await.unwrap();
    assert!(matches!(outcome, AppendOutcome::Appended(_)), "{outcome:?}");
    assert_eq!(journal.highest_sequence(&s).await.unwrap(), 3);
}

/// The server accepts connections but never answers: each attempt times out, and the request
/// ends in `Unavailable` within its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_as_unavailable() {
    let proxy = FaultProxy::start(&support::endpoint()).await;
    let (journal, _tables) = support::journal_with(impatient(&proxy.endpoint())).await;
    let s = stream("silent");
    proxy.set_stall(true);
    proxy.go_down().await; // cut pooled connections; new ones stall
    proxy.come_back().await;
    let started = Instant::now();
    let err = journal
        .append(request(&s, 0, 1, "silent-0"))
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    proxy.set_stall(false);
    proxy.go_down().await;
    proxy.come_back().await;
    // The timed-out attempts may have been applied in principle; here they never left the proxy.
    assert_eq!(journal.highest_sequence(&s).await.unwrap(), 0);
}

/// Events DynamoDB cannot store are refused before any request is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_appends_are_too_large_and_write_nothing() {
    let (journal, _tables) = support::journal().await;
    let s = stream("big");
    let big = |bytes: usize| NewEvent {
        event_type: "test.Big".into(),
        schema_version: 1,
        payload: vec![7; bytes],
    };
    let mut one_huge = request(&s, 0, 1, "huge");
    one_huge.events = vec![big(410 * 1024)];
    let mut too_many = request(&s, 0, MAX_EVENTS_PER_APPEND as u64 + 1, "many");
    too_many.events.iter_mut().for_each(|e| e.payload = vec![1]);
    let mut too_heavy = request(&s, 0, 12, "heavy");
    too_heavy.events = (0..12).map(|_| big(380 * 1024)).collect();

    let before = journal.request_counts();
    for (req, limit) in [
        (one_huge, 400 * 1024),
        (too_many, 100),
        (too_heavy, 4 * 1024 * 1024),
    ] {
        let command_id = req.metadata.command_id.clone();
        match journal.append(req).await {
            Err(JournalError::TooLarge { size, limit: l, .. }) => {
                assert_eq!(l, limit, "{command_id}");
                assert!(size > l, "{command_id}");
            }
            other => panic!("{command_id}: {other:?}"),
        }
        assert!(
            journal
                .command_record("ann", &command_id)
                .await
                .unwrap()
                .is_none()
        );
    }
    let spent = journal.request_counts().since(&before);
    assert_eq!(
        spent.operation("TransactWriteItems"),
        0,
        "refused before any write: {spent:?}"
    );
    assert_eq!(journal.highest_sequence(&s).await.unwrap(), 0);

    // The largest batch that fits goes through.
    let mut most = request(&s, 0, MAX_EVENTS_PER_APPEND as u64, "most");
    most.events.iter_mut().for_each(|e| e.payload = vec![1]);
    journal.append(most).await.unwrap();
    assert_eq!(
        journal.highest_sequence(&s).await.unwrap(),
        MAX_EVENTS_PER_APPEND as u64
    );
}

/// DynamoDB answers `IdempotentParameterMismatch` when a token comes back with other contents.
/// Injected here (moto ignores tokens): for a command with no record the outcome is unknown, so
/// the caller gets a retryable UNAVAILABLE, never a storage error (INTERNAL); for a command that
/// was decided, its original record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_idempotency_token_is_retry_safe() {
    let proxy = FaultProxy::start(&support::endpoint()).await;
    let (journal, _tables) = support::journal_with(support::config_for(&proxy.endpoint())).await;
    let s = stream("token");
    let first = journal.append(request(&s, 0, 1, "token-1")).await.unwrap();

    let mismatch = || async {
        proxy.answer_next_with(&[(400, "IdempotentParameterMismatchException")]);
        proxy.go_down().await;
        proxy.come_back().await;
    };
    mismatch().await;
    let err = journal
        .append(request(&s, 1, 1, "token-2"))
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::Unavailable(_)), "{err:?}");
    assert_eq!(journal.highest_sequence(&s).await.unwrap(), 1);
    // Resending is safe and now succeeds.
    let resent = journal.append(request(&s, 1, 1, "token-2")).await.unwrap();
    assert!(matches!(resent, AppendOutcome::Appended(_)), "{resent:?}");

    // The first command decided again (another timestamp), its token refused: the original.
    mismatch().await;
    let mut again = request(&s, 0, 1, "token-1");
    again.metadata.timestamp_ms += 1;
    let outcome = journal.append(again).await.unwrap();
    assert_eq!(outcome, AppendOutcome::Duplicate(first.record().clone()));
}
