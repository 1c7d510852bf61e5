//! A running updater whose read store fails: before, during and after commit, several times in
//! a row; a PostgreSQL connection terminated mid-commit; failures that are not transient; a
//! store broken for real (a table or column renamed away) and repaired; a projection that
//! panics. Afterwards every view equals a rebuild from the journal. A value the store refuses
//! still parks only its event.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kiroku_journal::Envelope;
use kiroku_read_model_updater::{Change, Projection, ROOMS, RoomsProjection};

use support::faults::{CommitFault, FaultyStore, StateFault};
use support::*;

/// Rounds of faults: each fault point three times in a row, twice over. Each round writes rooms
/// of one event that nothing writes again: an event lost there would stay lost.
async fn faults_at_every_point_of_a_commit(w: World) {
    let faulty = FaultyStore::new(w.store.clone());
    let updater = w.updater_on(
        faulty.clone(),
        Arc::new(RoomsProjection),
        w.feed(),
        World::config(),
    );
    let mut progress = updater.progress();
    let mut health = updater.health();
    let (stop, task) = w.spawn(updater);
    w.room_with_messages("busy", 1).await;
    w.wait_for_position(&mut progress).await;
    let points = [CommitFault::Before, CommitFault::During, CommitFault::After];
    for (round, fault) in points.into_iter().cycle().take(6).enumerate() {
        faulty.fail_commits(fault, 3);
        for r in 0..8 {
            w.append(&format!("quiet-{round}-{r}"), 0, &[created("quiet")])
                .await;
        }
        let busy = round as u64 + 2;
        w.append("busy", busy, &[posted(&format!("busy-{busy}"), "more")])
            .await;
        w.wait_for_position(&mut progress).await;
        assert_eq!(faulty.armed(), 0, "round {round}: every {fault:?} fired");
        w.wait_until_committing(&mut health).await;
        let h = health.borrow().clone();
        assert_eq!(
            (h.transient_faults, h.restarts, h.consecutive_failures),
            (3 * (round as u64 + 1), 0, 0),
            "round {round}: each fault counted as transient, none restarted the updater"
        );
    }
    assert_eq!(faulty.injected(), 18);
    let last = health.borrow().last_failure.clone().unwrap();
    assert!(last.transient);
    assert_eq!(last.summary, "the read store is unavailable");
    assert!(!task.is_finished(), "the updater never stopped");
    drop(stop);
    task.await.unwrap();
    let quiet = w.store.dump(ROOMS, 1).await.unwrap().rooms.len();
    assert_eq!(quiet, 6 * 8 + 1, "every room is in the views");
    w.assert_views_equal_a_rebuild(1).await;
}

#[tokio::test]
async fn faults_before_during_and_after_commit_leave_the_sqlite_views_equal_to_a_rebuild() {
    faults_at_every_point_of_a_commit(World::new().await).await;
}

#[tokio::test]
async fn faults_before_during_and_after_commit_leave_the_postgres_views_equal_to_a_rebuild() {
    faults_at_every_point_of_a_commit(World::on_postgres().await).await;
}

/// The PostgreSQL backend of the updater's writing connection, once it waits on a lock.
async fn blocked_writer(monitor: &tokio_postgres::Client, application_name: &str) -> i32 {
    for _ in 0..400 {
        let rows = monitor
            .query(
                "SELECT pid FROM pg_stat_activity
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&application_name],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no connection of the updater waits on the lock");
}

#[tokio::test]
async fn a_postgres_connection_terminated_mid_commit_again_and_again_loses_nothing() {
    let w = World::on_postgres().await;
    let schema = w.schema.as_ref().unwrap();
    let updater = w.updater(Arc::new(RoomsProjection), w.feed());
    let mut progress = updater.progress();
    let mut health = updater.health();
    let (stop, task) = w.spawn(updater);
    w.room_with_messages("before", 2).await;
    w.wait_for_position(&mut progress).await;

    // Hold the checkpoint table: the updater's commit does all its writes, then waits on the
    // checkpoint's row, where its connection is terminated as an administrator (or a failover)
    // would.
    let mut holder = schema.admin().await;
    let lock = holder.transaction().await.unwrap();
    lock.batch_execute(&format!(
        "LOCK TABLE {}.checkpoints IN EXCLUSIVE MODE",
        schema.name
    ))
    .await
    .unwrap();
    let monitor = schema.admin().await;
    for round in 0..6 {
        for r in 0..4 {
            w.append(&format!("killed-{round}-{r}"), 0, &[created("quiet")])
                .await;
        }
        let pid = blocked_writer(&monitor, &schema.application_name).await;
        let ended: bool = monitor
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(ended, "round {round}: backend {pid} terminated");
    }
    // Each termination is a transient fault; while the lock is held no commit can succeed, so
    // the updater says it cannot commit (the read API's /readyz answers 503 from this).
    let h = tokio::time::timeout(
        Duration::from_secs(10),
        health.wait_for(|h| h.transient_faults >= 6),
    )
    .await
    .expect("every termination is counted")
    .unwrap()
    .clone();
    assert!(!h.committing && h.failing_since_ms.is_some(), "{h:?}");
    assert_eq!(h.restarts, 0, "{h:?}");
    assert_eq!(
        h.last_failure.as_ref().unwrap().summary,
        "the read store is unavailable"
    );
    lock.rollback().await.unwrap();

    w.wait_for_position(&mut progress).await;
    w.wait_until_committing(&mut health).await;
    assert!(!task.is_finished(), "the updater never stopped");
    drop(stop);
    task.await.unwrap();
    assert_eq!(w.store.dump(ROOMS, 1).await.unwrap().rooms.len(), 1 + 6 * 4);
    w.assert_views_equal_a_rebuild(1).await;
}

#[tokio::test]
async fn a_failure_that_is_not_transient_restarts_the_updater_which_then_catches_up() {
    let w = World::new().await;
    let faulty = FaultyStore::new(w.store.clone());
    let updater = w.updater_on(
        faulty.clone(),
        Arc::new(RoomsProjection),
        w.feed(),
        World::config(),
    );
    let mut progress = updater.progress();
    let mut health = updater.health();
    let (stop, task) = w.spawn(updater);
    w.room_with_messages("r1", 2).await;
    w.wait_for_position(&mut progress).await;

    // A schema it does not know, twice in a row; then a bug. Each restarts the updater, which
    // then reloads where it is from the store.
    let rounds = [
        (StateFault::Permanent, 2, "the read store refused the work"),
        (StateFault::Panic, 1, "the read-model updater panicked"),
    ];
    let mut restarts = 0;
    for (round, (fault, times, summary)) in rounds.into_iter().enumerate() {
        faulty.fail_states(fault, times);
        w.room_with_messages(&format!("r{}", round + 2), 3).await;
        w.wait_for_position(&mut progress).await;
        assert_eq!(faulty.armed(), 0);
        w.wait_until_committing(&mut health).await;
        restarts += times as u64;
        let h = health.borrow().clone();
        assert_eq!((h.restarts, h.transient_faults), (restarts, 0), "{h:?}");
        let last = h.last_failure.unwrap();
        assert!(!last.transient);
        assert_eq!(last.summary, summary, "no backend text: {last:?}");
        assert_eq!(last.error_id.len(), 16, "{last:?}");
    }
    assert!(!task.is_finished(), "the updater never stopped");
    drop(stop);
    task.await.unwrap();
    w.assert_views_equal_a_rebuild(1).await;
}

/// Panics on messages whose body says "panic" (a projection bug).
struct Panicky;

impl Projection for Panicky {
    fn name(&self) -> &str {
        ROOMS
    }
    fn reads(&self, aggregate_type: &str) -> bool {
        RoomsProjection.reads(aggregate_type)
    }
    fn changes(&self, event: &Envelope) -> Result<Vec<Change>, String> {
        let changes = RoomsProjection.changes(event)?;
        if changes
            .iter()
            .any(|c| matches!(c, Change::MessagePosted { body, .. } if body == "panic"))
        {
            panic!("injected: the projection cannot handle this message");
        }
        Ok(changes)
    }
}

#[tokio::test]
async fn a_projection_that_panics_parks_its_event_and_the_rest_goes_on() {
    let w = World::new().await;
    let updater = w.updater(Arc::new(Panicky), w.feed());
    let mut progress = updater.progress();
    let (_stop, task) = w.spawn(updater);
    w.append("r1", 0, &[created("r1")]).await;
    w.append("r1", 1, &[posted("a", "panic")]).await;
    w.room_with_messages("r2", 3).await;
    w.wait_for_position(&mut progress).await;
    assert!(!task.is_finished(), "the updater never stopped");
    assert_eq!(w.store.room("r2").await.unwrap().unwrap().message_count, 3);
    let parked = w.store.dead_letters(ROOMS, 10).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].envelope.sequence, 2);
    assert!(parked[0].error.contains("panicked"), "{}", parked[0].error);
}

/// What health says while the store itself is broken: fixed words, never the backend's text.
const BROKEN: &str =
    "the read store is broken: a table is missing or of another shape, or it cannot be written";

/// Ways to break a read store for real, as a migration not run or an administrator would, and
/// to repair it (the same SQL on SQLite and PostgreSQL): (what, break, repair).
const BREAKAGES: [(&str, &str, &str); 2] = [
    (
        "the active rooms table renamed away",
        "ALTER TABLE rooms_v1 RENAME TO rooms_v1_away",
        "ALTER TABLE rooms_v1_away RENAME TO rooms_v1",
    ),
    (
        "a column of the active messages table renamed away",
        "ALTER TABLE messages_v1 RENAME COLUMN body TO body_away",
        "ALTER TABLE messages_v1 RENAME COLUMN body_away TO body",
    ),
];

/// Between two batches the store is broken; the events sent then are neither applied nor
/// parked: the updater restarts with backoff and says it cannot commit, the checkpoint stays
/// before them. Once the store is repaired, they are applied and the views equal a rebuild.
async fn a_broken_store_parks_nothing_and_holds_the_checkpoint_until_repaired(w: World) {
    let updater = w.updater(Arc::new(RoomsProjection), w.feed());
    let mut progress = updater.progress();
    let mut health = updater.health();
    let (stop, task) = w.spawn(updater);
    w.room_with_messages("before", 2).await;
    for (round, (what, broken, repair)) in BREAKAGES.into_iter().enumerate() {
        // Rooms of their own, created while the store is whole: every event sent while it is
        // broken is a message, which writes to both tables broken here.
        let room = format!("during-{round}");
        w.append(&room, 0, &[created(&room)]).await;
        w.wait_for_position(&mut progress).await;
        let at = w.store.checkpoint(ROOMS, 1).await.unwrap().position;
        let restarts = health.borrow().restarts;

        w.alter_store(broken, broken).await;
        for i in 1..=3 {
            w.append(&room, i, &[posted(&format!("{room}-m{i}"), "while broken")])
                .await;
        }
        // And a message in the room made before the loop (its versions 3, 4, ...).
        let next = 3 + round as u64;
        w.append("before", next, &[posted(&format!("before-m{next}"), "x")])
            .await;

        let h = tokio::time::timeout(
            Duration::from_secs(30),
            health.wait_for(|h| h.restarts >= restarts + 3),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the updater restarts, again and again"))
        .unwrap()
        .clone();
        assert!(
            !h.committing && h.failing_since_ms.is_some(),
            "{what}: {h:?}"
        );
        assert!(h.consecutive_failures >= 3, "{what}: {h:?}");
        assert_eq!(h.transient_faults, 0, "{what}: {h:?}");
        let last = h.last_failure.clone().unwrap();
        assert!(!last.transient, "{what}: {last:?}");
        assert_eq!(last.summary, BROKEN, "{what}: fixed words, no backend text");
        assert!(
            w.store.dead_letters(ROOMS, 100).await.unwrap().is_empty(),
            "{what}: nothing is parked"
        );
        assert_eq!(
            w.store.state(ROOMS).await.unwrap().dead_letters,
            0,
            "{what}"
        );
        assert_eq!(
            w.store.checkpoint(ROOMS, 1).await.unwrap().position,
            at,
            "{what}: the checkpoint stays before the events not applied"
        );
        assert_eq!(
            progress.borrow().position,
            at,
            "{what}: nor does progress move"
        );
        assert!(!task.is_finished(), "{what}: the updater never stopped");

        w.alter_store(repair, repair).await;
        w.wait_for_position(&mut progress).await;
        w.wait_until_committing(&mut health).await;
        assert!(
            w.store.dead_letters(ROOMS, 100).await.unwrap().is_empty(),
            "{what}: nothing is parked once repaired"
        );
        let room_view = w.store.room(&room).await.unwrap().unwrap();
        assert_eq!(room_view.message_count, 3, "{what}: every message applied");
    }
    drop(stop);
    task.await.unwrap();
    let before = w.store.room("before").await.unwrap().unwrap();
    assert_eq!(before.message_count, 2 + BREAKAGES.len() as u64);
    w.assert_views_equal_a_rebuild(1).await;
}

#[tokio::test]
async fn a_broken_sqlite_store_parks_nothing_restarts_the_updater_and_catches_up_once_repaired() {
    a_broken_store_parks_nothing_and_holds_the_checkpoint_until_repaired(World::new().await).await;
}

#[tokio::test]
async fn a_broken_postgres_store_parks_nothing_restarts_the_updater_and_catches_up_once_repaired() {
    a_broken_store_parks_nothing_and_holds_the_checkpoint_until_repaired(
        World::on_postgres().await,
    )
    .await;
}

/// A value the store refuses is one event's fault: that event is parked (and its aggregate's
/// later events behind it); every other event is applied, and the updater never restarts.
async fn a_row_the_store_refuses_parks_its_event_and_the_rest_goes_on(w: World) {
    w.alter_store(
        "CREATE TRIGGER refuse_forbidden BEFORE INSERT ON messages_v1
         WHEN NEW.body = 'forbidden' BEGIN SELECT RAISE(ABORT, 'forbidden body'); END",
        "ALTER TABLE messages_v1 ADD CONSTRAINT refuse_forbidden CHECK (body <> 'forbidden')",
    )
    .await;
    let updater = w.updater(Arc::new(RoomsProjection), w.feed());
    let mut progress = updater.progress();
    let health = updater.health();
    let (stop, task) = w.spawn(updater);
    w.append("r1", 0, &[created("r1")]).await;
    w.append("r1", 1, &[posted("ok", "fine")]).await;
    w.append("r1", 2, &[posted("no", "forbidden")]).await;
    w.append("r1", 3, &[posted("later", "fine")]).await;
    w.room_with_messages("r2", 3).await;
    w.wait_for_position(&mut progress).await;
    let parked = w.store.dead_letters(ROOMS, 10).await.unwrap();
    let mut parked: Vec<(u64, String)> = parked
        .into_iter()
        .map(|d| (d.envelope.sequence, d.error))
        .collect();
    parked.sort();
    let sequences: Vec<u64> = parked.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        sequences,
        [3, 4],
        "the refused message and the one behind it: {parked:?}"
    );
    assert!(parked[0].1.contains("forbidden"), "{parked:?}");
    assert_eq!(w.store.room("r1").await.unwrap().unwrap().message_count, 1);
    assert_eq!(w.store.room("r2").await.unwrap().unwrap().message_count, 3);
    let h = health.borrow().clone();
    assert_eq!((h.restarts, h.transient_faults), (0, 0), "{h:?}");
    assert!(!task.is_finished());
    drop(stop);
    task.await.unwrap();
}

#[tokio::test]
async fn a_row_the_sqlite_store_refuses_parks_its_event_and_the_rest_goes_on() {
    a_row_the_store_refuses_parks_its_event_and_the_rest_goes_on(World::new().await).await;
}

#[tokio::test]
async fn a_row_the_postgres_store_refuses_parks_its_event_and_the_rest_goes_on() {
    a_row_the_store_refuses_parks_its_event_and_the_rest_goes_on(World::on_postgres().await).await;
}
