//! The read side through the real binary: PROJECTED commands in `dev`, and an updater process
//! killed again and again under load, on SQLite and on PostgreSQL.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kiroku_proto::v1::command_service_client::CommandServiceClient;
use kiroku_proto::v1::{self as pb, WaitMode, execute_request::Command as C};
use kiroku_read_model_updater::{ROOMS, ReadStore, open_store};
use tonic::Code;

use support::*;

fn projected(mut request: pb::ExecuteRequest) -> pb::ExecuteRequest {
    request.meta.as_mut().unwrap().wait = WaitMode::Projected as i32;
    request
}

fn create(name: &str) -> C {
    C::CreateRoom(pb::CreateRoom { name: name.into() })
}

#[tokio::test]
async fn dev_answers_projected_commands_once_the_views_show_them() {
    let dir = tempfile::tempdir().unwrap();
    let k = dev(dir.path());
    let mut client =
        CommandServiceClient::with_interceptor(channel(&k.url).await, as_principal("ann"));
    let reply = client
        .execute(projected(exec("r1", "c0", create("lobby"))))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.projected, "{reply:?}");
    let store = open_store(&format!(
        "sqlite://{}",
        dir.path().join("views.db").display()
    ))
    .await
    .unwrap();
    for i in 1..=5 {
        let reply = client
            .execute(projected(exec(
                "r1",
                &format!("c{i}"),
                post(&format!("hello {i}")),
            )))
            .await
            .unwrap()
            .into_inner();
        assert!(reply.projected);
        // Read-your-writes: the very next query sees the command.
        let room = store.room("r1").await.unwrap().expect("projected");
        assert_eq!((room.version, room.message_count), (reply.version, i));
    }
}

#[tokio::test]
async fn projected_commands_are_refused_where_no_read_model_runs() {
    let dir = tempfile::tempdir().unwrap();
    let journal = format!("sqlite://{}", dir.path().join("journal.db").display());
    let k = start(
        &["write-api", "--listen", "127.0.0.1:0"],
        &[
            ("KIROKU_TOKENS", "0123456789abcdef-token=ann"),
            ("KIROKU_JOURNAL", &journal),
        ],
    );
    let channel = channel(&k.url).await;
    let mut client = CommandServiceClient::with_interceptor(channel, |mut r: tonic::Request<()>| {
        r.metadata_mut().insert(
            "authorization",
            "Bearer 0123456789abcdef-token".parse().unwrap(),
        );
        Ok(r)
    });
    let err = client
        .execute(projected(exec("r1", "c0", create("lobby"))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("WAIT_MODE_PROJECTED"),
        "{}",
        err.message()
    );
    // Nothing ran: the same id with PERSISTED creates the room now.
    let reply = client
        .execute(exec("r1", "c0", create("lobby")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.version, 1);
}

#[test]
fn rebuild_and_dead_letters_refuse_what_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let journal = format!("sqlite://{}", dir.path().join("journal.db").display());
    let views = format!("sqlite://{}", dir.path().join("views.db").display());
    let out = command(
        &[
            "rebuild",
            "nope",
            "--journal",
            &journal,
            "--read-store",
            &views,
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not found") && stderr.contains("rooms"),
        "{stderr}"
    );
    let out = command(&["dead-letters", "list", "--read-store", &views], &[])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no parked events"));
    let out = command(
        &["dead-letters", "retry", "r1", "--read-store", &views],
        &[],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no parked events"));
}

async fn caught_up(store: &dyn ReadStore, head: u64) {
    for _ in 0..600 {
        if store.state(ROOMS).await.unwrap().checkpoint.position >= head {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the updater did not reach position {head}");
}

/// Load through the write API while an updater process is SIGKILLed and restarted again and
/// again; afterwards the views equal a rebuild from the journal, and every acknowledged message
/// is in them once.
async fn killing_the_updater_mid_batch_leaves_views_equal_to_a_rebuild(read_store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("journal.db");
    let journal = format!("sqlite://{}", journal_path.display());
    let write = start(
        &["write-api", "--listen", "127.0.0.1:0"],
        &[
            ("KIROKU_TOKENS", "0123456789abcdef-token=ann"),
            ("KIROKU_JOURNAL", &journal),
        ],
    );
    let channel = channel(&write.url).await;
    let client = CommandServiceClient::with_interceptor(channel, |mut r: tonic::Request<()>| {
        r.metadata_mut().insert(
            "authorization",
            "Bearer 0123456789abcdef-token".parse().unwrap(),
        );
        Ok(r)
    });
    const ROOMS_N: usize = 8;
    for r in 0..ROOMS_N {
        client
            .clone()
            .execute(exec(
                &format!("r{r}"),
                &format!("create-{r}"),
                create("room"),
            ))
            .await
            .unwrap();
    }
    let running = Arc::new(AtomicBool::new(true));
    let acked = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..ROOMS_N)
        .map(|r| {
            let (mut client, running, acked) = (client.clone(), running.clone(), acked.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while running.load(Ordering::Relaxed) {
                    i += 1;
                    client
                        .execute(exec(
                            &format!("r{r}"),
                            &format!("post-{r}-{i}"),
                            post("under load"),
                        ))
                        .await
                        .unwrap();
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let updater_env = [
        ("KIROKU_JOURNAL", journal.as_str()),
        ("KIROKU_READ_STORE", read_store),
        ("KIROKU_UPDATER_BATCH", "40"),
    ];
    let updater = || start_until(&["read-model-updater"], &updater_env, "projecting");
    for round in 0..10u64 {
        let (mut child, _) = updater();
        tokio::time::sleep(Duration::from_millis(150 + fastrand_ms(round))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    running.store(false, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let store = open_store(read_store).await.unwrap();
    let (mut last, _) = updater();
    caught_up(store.as_ref(), journal_head(&journal_path)).await;
    last.kill().unwrap();
    last.wait().unwrap();
    let live = store.dump(ROOMS, 1).await.unwrap();
    let posted = acked.load(Ordering::Relaxed) as usize;
    assert!(posted > 50, "the load ran ({posted} messages)");
    assert_eq!(
        live.messages.len(),
        posted,
        "every acknowledged message once"
    );

    let out = command(
        &[
            "rebuild",
            "rooms",
            "--journal",
            &journal,
            "--read-store",
            read_store,
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("version 2 is now active"));
    assert_eq!(
        store.dump(ROOMS, 2).await.unwrap(),
        live,
        "live views = rebuilt views"
    );
}

/// 0–250 ms, different per round, so kills land at different points of a batch.
fn fastrand_ms(round: u64) -> u64 {
    (round * 7919 + std::process::id() as u64 * 31) % 250
}

#[tokio::test]
async fn killing_the_updater_mid_batch_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let views = format!("sqlite://{}", dir.path().join("views.db").display());
    killing_the_updater_mid_batch_leaves_views_equal_to_a_rebuild(&views).await;
}

#[tokio::test]
async fn killing_the_updater_mid_batch_on_postgres() {
    let url = std::env::var("KIROKU_TEST_POSTGRES_URL").expect(
        "KIROKU_TEST_POSTGRES_URL is not set: run `bash deploy/local/test.sh` (it starts PostgreSQL)",
    );
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    killing_the_updater_mid_batch_leaves_views_equal_to_a_rebuild(&scoped).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
