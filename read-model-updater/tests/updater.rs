//! The updater against a real SQLite journal and real read stores.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kiroku_chat::Room;
use kiroku_core::Aggregate;
use kiroku_journal::{
    AppendRequest, Envelope, EventMetadata, Journal, JournalError, NewEvent, StreamId,
};
use kiroku_read_model_updater::{
    Change, Consistency, ConsistencyWaiter, Feed, Projection, ROOMS, RoomsProjection, dead_letters,
    rebuild,
};

use support::*;

#[tokio::test]
async fn events_reach_the_views_and_a_waiter_is_woken_by_the_commit() {
    let w = World::new().await;
    let updater = w.updater(Arc::new(RoomsProjection), w.feed());
    let waiter = ConsistencyWaiter::new(w.store.clone(), ROOMS, Some(updater.progress()));
    let (_stop, _task) = w.spawn(updater);
    w.room_with_messages("r1", 3).await;
    w.wait_for(&waiter, "r1", 4).await;
    let room = w.store.room("r1").await.unwrap().unwrap();
    assert_eq!(
        (room.name.as_str(), room.message_count, room.version),
        ("r1", 3, 4)
    );
    let page = w.store.messages("r1", None, 10).await.unwrap();
    assert_eq!(page.messages[0].body, "body 3");
    // A version nobody wrote yet: the wait ends at its deadline with where the view is.
    let late = waiter
        .wait_for(&StreamId::new("room", "r1"), 9, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(late, Consistency::NotYet { applied: 4 });
}

/// Fails on messages whose body says "poison" until it is fixed (fault injection: a projection
/// bug and its fix).
struct Flaky {
    fixed: AtomicBool,
    calls: AtomicU64,
}

impl Projection for Flaky {
    fn name(&self) -> &str {
        ROOMS
    }
    fn reads(&self, aggregate_type: &str) -> bool {
        RoomsProjection.reads(aggregate_type)
    }
    fn changes(&self, event: &Envelope) -> Result<Vec<Change>, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let changes = RoomsProjection.changes(event)?;
        let poison = changes
            .iter()
            .any(|c| matches!(c, Change::MessagePosted { body, .. } if body == "poison"));
        if poison && !self.fixed.load(Ordering::Relaxed) {
            return Err("the projection cannot handle this message yet".into());
        }
        Ok(changes)
    }
}

#[tokio::test]
async fn a_poison_event_parks_the_rest_goes_on_and_a_retry_after_the_fix_applies_it() {
    let w = World::new().await;
    let flaky = Arc::new(Flaky {
        fixed: AtomicBool::new(false),
        calls: AtomicU64::new(0),
    });
    let updater = w.updater(flaky.clone(), w.feed());
    let mut progress = updater.progress();
    let waiter = ConsistencyWaiter::new(w.store.clone(), ROOMS, Some(updater.progress()));
    let (_stop, _task) = w.spawn(updater);
    w.append("r1", 0, &[created("r1")]).await;
    w.append("r1", 1, &[posted("a", "fine")]).await;
    w.append("r1", 2, &[posted("b", "poison")]).await;
    w.append("r1", 3, &[posted("c", "after")]).await;
    w.room_with_messages("r2", 5).await;
    w.wait_for(&waiter, "r2", 6).await;
    w.wait_for_position(&mut progress).await;

    let r1 = StreamId::new("room", "r1");
    assert_eq!(
        w.store.room("r2").await.unwrap().unwrap().message_count,
        5,
        "other rooms go on"
    );
    assert_eq!(
        w.store.applied_sequence(ROOMS, &r1).await.unwrap(),
        2,
        "r1 stops before the poison"
    );
    let parked = w.store.dead_letters(ROOMS, 10).await.unwrap();
    assert_eq!(
        parked
            .iter()
            .map(|d| d.envelope.sequence)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(parked[0].attempts, 3, "retried before parking");
    assert!(
        parked[0].error.contains("cannot handle"),
        "{}",
        parked[0].error
    );
    assert_eq!(w.store.state(ROOMS).await.unwrap().dead_letters, 2);

    // Retrying before the fix changes nothing but the attempts.
    let again = dead_letters::retry(w.store.as_ref(), flaky.as_ref(), &r1)
        .await
        .unwrap();
    assert_eq!((again.applied, again.still_parked), (0, 2));

    flaky.fixed.store(true, Ordering::Relaxed);
    let fixed = dead_letters::retry(w.store.as_ref(), flaky.as_ref(), &r1)
        .await
        .unwrap();
    assert_eq!((fixed.applied, fixed.still_parked), (2, 0));
    let ids: Vec<_> = w
        .store
        .messages("r1", None, 10)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(ids, ["c", "b", "a"]);
    // New events of r1 flow again.
    w.append("r1", 4, &[posted("d", "flowing")]).await;
    w.wait_for(&waiter, "r1", 5).await;
    assert!(w.store.dead_letters(ROOMS, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn skipping_a_parked_event_lets_its_aggregate_go_on_without_it() {
    let w = World::new().await;
    let flaky = Arc::new(Flaky {
        fixed: AtomicBool::new(false),
        calls: AtomicU64::new(0),
    });
    let updater = w.updater(flaky.clone(), w.feed());
    let mut progress = updater.progress();
    let (_stop, _task) = w.spawn(updater);
    w.append("r1", 0, &[created("r1")]).await;
    w.append("r1", 1, &[posted("b", "poison")]).await;
    w.append("r1", 2, &[posted("c", "after")]).await;
    w.wait_for_position(&mut progress).await;
    let r1 = StreamId::new("room", "r1");
    assert!(
        dead_letters::skip(w.store.as_ref(), flaky.as_ref(), &r1, 3)
            .await
            .is_err(),
        "only the oldest"
    );
    let done = dead_letters::skip(w.store.as_ref(), flaky.as_ref(), &r1, 2)
        .await
        .unwrap();
    assert_eq!((done.applied, done.still_parked), (2, 0));
    let ids: Vec<_> = w
        .store
        .messages("r1", None, 10)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(ids, ["c"]);
}

/// Loses every third event up to position `until` (fault injection: a transport that drops
/// events). A gap is noticed when the aggregate's next event arrives.
struct Lossy {
    inner: Arc<dyn Feed>,
    until: u64,
}

#[async_trait]
impl Feed for Lossy {
    async fn next(
        &self,
        position: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Envelope>, JournalError> {
        let events = self.inner.next(position, max, wait).await?;
        let last = events.last().cloned();
        let mut kept: Vec<Envelope> = events
            .into_iter()
            .filter(|e| e.global_position > self.until || e.global_position % 3 != 0)
            .collect();
        // Keep the batch's end so the position still advances past what was lost.
        if let Some(last) = last
            && kept.last().map(|e| e.global_position) != Some(last.global_position)
        {
            kept.push(last);
        }
        Ok(kept)
    }
    async fn head(&self) -> Result<Option<u64>, JournalError> {
        self.inner.head().await
    }
}

#[tokio::test]
async fn gaps_in_the_feed_are_repaired_from_the_journal() {
    let w = World::new().await;
    for room in ["r1", "r2", "r3"] {
        w.room_with_messages(room, 19).await;
    }
    let until = w.journal.head_position().await.unwrap().unwrap();
    for room in ["r1", "r2", "r3"] {
        w.append(room, 20, &[posted(&format!("{room}-last"), "last")])
            .await;
    }
    let updater = w.updater(
        Arc::new(RoomsProjection),
        Arc::new(Lossy {
            inner: w.feed(),
            until,
        }),
    );
    let mut progress = updater.progress();
    let (_stop, _task) = w.spawn(updater);
    w.wait_for_position(&mut progress).await;
    for room in ["r1", "r2", "r3"] {
        let view = w.store.room(room).await.unwrap().unwrap();
        assert_eq!((view.message_count, view.version), (20, 21), "{room}");
    }
    // Repaired = replayed.
    w.assert_views_equal_a_rebuild(1).await;
}

#[tokio::test]
async fn a_rebuild_while_serving_keeps_answering_switches_atomically_and_equals_the_live_views() {
    let w = World::new().await;
    let updater = w.updater(Arc::new(RoomsProjection), w.feed());
    let mut progress = updater.progress();
    let (_stop, _task) = w.spawn(updater);
    for r in 0..20 {
        w.room_with_messages(&format!("r{r}"), 10).await;
    }
    w.wait_for_position(&mut progress).await;

    // Readers during the rebuild: every query answers, and always a whole room.
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (store, reading) = (w.store.clone(), reading.clone());
        tokio::spawn(async move {
            let mut answers = 0u64;
            while reading.load(Ordering::Relaxed) {
                let room = store
                    .room("r0")
                    .await
                    .expect("queries answer during a rebuild");
                assert_eq!(room.expect("r0 is always there").message_count, 10);
                answers += 1;
                tokio::task::yield_now().await;
            }
            answers
        })
    };
    // Writes continue while the rebuild runs.
    let writer = {
        let journal = w.journal.clone();
        tokio::spawn(async move {
            for r in 20..40 {
                let stream = StreamId::new("room", format!("r{r}"));
                let enc = Room::encode(&created("late"));
                journal
                    .append(AppendRequest {
                        stream,
                        expected_sequence: 0,
                        events: vec![NewEvent {
                            event_type: enc.event_type,
                            schema_version: enc.schema_version,
                            payload: enc.payload,
                        }],
                        metadata: EventMetadata {
                            command_id: format!("late-{r}"),
                            timestamp_ms: 1_700_000_100_000,
                            ..EventMetadata::default()
                        },
                    })
                    .await
                    .unwrap();
            }
        })
    };
    let mut reports = 0;
    let done = rebuild::rebuild(
        w.store.clone(),
        w.journal(),
        Arc::new(RoomsProjection),
        50,
        |_| reports += 1,
    )
    .await
    .unwrap();
    writer.await.unwrap();
    assert_eq!(done.version, 2);
    assert!(reports > 0, "progress is reported");
    assert_eq!(w.store.state(ROOMS).await.unwrap().active_version, 2);
    // The live updater follows the switch and applies what came after the rebuild's end.
    w.wait_for_position(&mut progress).await;
    tokio::time::timeout(
        Duration::from_secs(20),
        progress.wait_for(|p| p.version == 2),
    )
    .await
    .unwrap()
    .unwrap();
    w.wait_for_position(&mut progress).await;
    reading.store(false, Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0);
    assert_eq!(w.store.room("r39").await.unwrap().unwrap().name, "late");

    // A second rebuild from zero equals the live version 2.
    let again = rebuild::rebuild(
        w.store.clone(),
        w.journal(),
        Arc::new(RoomsProjection),
        500,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(again.version, 3);
    w.wait_for_position(&mut progress).await;
    assert_eq!(
        w.store.dump(ROOMS, 3).await.unwrap(),
        w.store.dump(ROOMS, 2).await.unwrap()
    );
}

#[tokio::test]
async fn a_stopped_updater_resumes_from_its_checkpoint_without_doubling() {
    let w = World::new().await;
    for r in 0..5 {
        w.room_with_messages(&format!("r{r}"), 30).await;
    }
    // Several short runs, each stopped after a few batches.
    for _ in 0..5 {
        let mut updater = w.updater(Arc::new(RoomsProjection), w.feed());
        for _ in 0..2 {
            updater.step().await.unwrap();
        }
    }
    let mut updater = w.updater(Arc::new(RoomsProjection), w.feed());
    let mut progress = updater.progress();
    while updater.step().await.unwrap() > 0 {}
    w.wait_for_position(&mut progress).await;
    assert_eq!(w.store.dump(ROOMS, 1).await.unwrap().messages.len(), 150);
    w.assert_views_equal_a_rebuild(1).await;
}
