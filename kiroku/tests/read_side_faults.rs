//! `kiroku dev` on a PostgreSQL read store whose connection is terminated mid-commit, again and
//! again, as an administrator or a failover would: the read side keeps running, says it cannot
//! commit (readiness, projection status, metrics) without showing the backend's words, and once
//! the store lets it, catches up to views equal to a rebuild from the journal.

mod support;

use std::time::Duration;

use kiroku_proto::v1::command_service_client::CommandServiceClient;
use kiroku_proto::v1::read_service_client::ReadServiceClient;
use kiroku_proto::v1::{self as pb, execute_request::Command as C};
use kiroku_read_model_updater::{ROOMS, open_store};
use serde_json::Value;

use support::*;

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A schema of the test database for this test's read store, and the application name its
/// connections carry (so that the test finds exactly them).
struct Schema {
    admin: tokio_postgres::Client,
    name: String,
    application_name: String,
    store_url: String,
}

impl Schema {
    async fn create() -> Self {
        let url = std::env::var("KIROKU_TEST_POSTGRES_URL").expect(
            "KIROKU_TEST_POSTGRES_URL is not set: run `bash deploy/local/test.sh` (it starts PostgreSQL)",
        );
        let admin = connect(&url).await;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        let application_name = format!("kiroku-dev-{name}");
        let sep = if url.contains('?') { '&' } else { '?' };
        let store_url = format!(
            "{url}{sep}options=-c%20search_path%3D{name}&application_name={application_name}"
        );
        Self {
            admin,
            name,
            application_name,
            store_url,
        }
    }

    async fn drop_schema(self) {
        self.admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .unwrap();
    }

    /// The backend of the updater's writing connection, once it waits on a lock.
    async fn blocked_writer(&self) -> i32 {
        for _ in 0..400 {
            let rows = self
                .admin
                .query(
                    "SELECT pid FROM pg_stat_activity
                     WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    &[&self.application_name],
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
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL is up");
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn dev_survives_its_postgres_connection_terminated_mid_commit_and_says_so_until_it_recovers()
{
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::create().await;
    let k = dev_served_with(dir.path(), &["--read-store", &schema.store_url], &[]);
    let channel = channel(&k.kiroku.url).await;
    let mut commands = CommandServiceClient::with_interceptor(channel.clone(), as_principal("ann"));
    let mut reads = ReadServiceClient::with_interceptor(channel, as_principal("ann"));
    let rooms = 4;
    for r in 0..rooms {
        let create = C::CreateRoom(pb::CreateRoom {
            name: "lobby".into(),
        });
        commands
            .execute(exec(&format!("r{r}"), &format!("create-{r}"), create))
            .await
            .unwrap();
    }
    let (code, body) = get(&format!("{}/readyz", k.http)).await;
    assert_eq!(
        (code, &body["status"]),
        (200, &Value::from("ready")),
        "{body}"
    );

    // Hold the checkpoint table: the updater's commit does all its writes, then waits on it.
    let holder = connect(&std::env::var("KIROKU_TEST_POSTGRES_URL").unwrap()).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .batch_execute(&format!(
            "LOCK TABLE {}.checkpoints IN EXCLUSIVE MODE",
            schema.name
        ))
        .await
        .unwrap();
    let mut posted = 0;
    for round in 0..3 {
        for r in 0..rooms {
            posted += 1;
            commands
                .execute(exec(
                    &format!("r{r}"),
                    &format!("post-{round}-{r}"),
                    post("while the store fails"),
                ))
                .await
                .unwrap();
        }
        let pid = schema.blocked_writer().await;
        let ended: bool = schema
            .admin
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(ended, "round {round}: backend {pid} terminated");
    }
    // Once more blocked on the lock: the updater retried, it did not stop.
    schema.blocked_writer().await;

    // Not ready, in fixed words: nothing of PostgreSQL's text, nor of the schema.
    let (code, body) = get(&format!("{}/readyz", k.http)).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body["message"], "not ready: the read-model updater cannot commit",
        "{body}"
    );
    let text = body.to_string();
    for secret in ["FATAL", "terminating", "administrator", "SQL", &schema.name] {
        assert!(!text.contains(secret), "{secret:?} in {text}");
    }
    let (code, status) = get(&format!("{}/v1/projections/rooms", k.http)).await;
    assert_eq!(code, 200, "{status}");
    let updater = &status["updater"];
    assert_eq!(updater["committing"], false, "{status}");
    assert!(
        updater["transient_faults"].as_u64().unwrap() >= 3,
        "{status}"
    );
    assert!(
        updater["failing_since_ms"].as_i64().unwrap() > 0,
        "{status}"
    );
    assert_eq!(updater["restarts"], 0, "{status}");
    assert_eq!(
        updater["last_failure"]["summary"], "the read store is unavailable",
        "{status}"
    );
    assert_eq!(
        body["error_id"], updater["last_failure"]["error_id"],
        "readiness names the failure's log id"
    );
    let grpc = reads
        .get_projection_status(pb::GetProjectionStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .updater
        .expect("dev runs the updater");
    assert!(!grpc.committing && grpc.transient_faults >= 3, "{grpc:?}");
    assert_eq!(grpc.last_error, "the read store is unavailable");
    let metrics = reqwest::get(format!("{}/metrics", k.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kiroku_updater_committing{projection=\"rooms\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE kiroku_updater_transient_faults_total counter"),
        "{metrics}"
    );

    // The store lets it commit again: ready, caught up, and equal to a rebuild.
    holder.batch_execute("ROLLBACK").await.unwrap();
    let mut ready = false;
    for _ in 0..200 {
        if get(&format!("{}/readyz", k.http)).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready again once the updater commits");
    let store = open_store(&schema.store_url).await.unwrap();
    let head = journal_head(&dir.path().join("journal.db"));
    for _ in 0..200 {
        if store.state(ROOMS).await.unwrap().checkpoint.position >= head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.state(ROOMS).await.unwrap().checkpoint.position, head);
    let live = store.dump(ROOMS, 1).await.unwrap();
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
            &format!("sqlite://{}", dir.path().join("journal.db").display()),
            "--read-store",
            &schema.store_url,
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
    assert_eq!(
        store.dump(ROOMS, 2).await.unwrap(),
        live,
        "live views = rebuilt views"
    );
    drop(k);
    schema.drop_schema().await;
}

/// `/readyz` needs no credentials: when the views cannot be read it says so in fixed words and
/// keeps PostgreSQL's (relation names, SQL) for the log.
#[tokio::test]
async fn readyz_says_the_views_cannot_be_read_without_the_backends_words() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::create().await;
    let k = dev_served_with(dir.path(), &["--read-store", &schema.store_url], &[]);
    assert_eq!(get(&format!("{}/readyz", k.http)).await.0, 200);
    // The store's tables go away under the running process.
    schema
        .admin
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", schema.name))
        .await
        .unwrap();
    let (code, body) = get(&format!("{}/readyz", k.http)).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body["message"], "not ready: the views cannot be read",
        "{body}"
    );
    let text = body.to_string();
    for secret in ["relation", "does not exist", "ERROR", &schema.name] {
        assert!(!text.contains(secret), "{secret:?} in {text}");
    }
    let mut k = k;
    assert!(
        k.kiroku.child.try_wait().unwrap().is_none(),
        "dev keeps running"
    );
}

/// The same faults under `kiroku read-model-updater` (the updater alone, another process
/// writing the journal): six terminations in a row, and it neither stops nor parks anything.
#[tokio::test]
async fn a_standalone_updater_survives_its_postgres_connection_terminated_mid_commit() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::create().await;
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
    let mut commands =
        CommandServiceClient::with_interceptor(channel, |mut r: tonic::Request<()>| {
            r.metadata_mut().insert(
                "authorization",
                "Bearer 0123456789abcdef-token".parse().unwrap(),
            );
            Ok(r)
        });
    let (mut updater, _) = start_until(
        &["read-model-updater"],
        &[
            ("KIROKU_JOURNAL", journal.as_str()),
            ("KIROKU_READ_STORE", schema.store_url.as_str()),
        ],
        "projecting",
    );
    let create = |r: usize| {
        exec(
            &format!("r{r}"),
            &format!("create-{r}"),
            C::CreateRoom(pb::CreateRoom {
                name: "lobby".into(),
            }),
        )
    };
    commands.execute(create(0)).await.unwrap();
    let store = open_store(&schema.store_url).await.unwrap();
    let caught_up = |head: u64| {
        let store = store.clone();
        async move {
            for _ in 0..400 {
                if store.state(ROOMS).await.unwrap().checkpoint.position >= head {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            false
        }
    };
    assert!(caught_up(journal_head(&journal_path)).await);

    let holder = connect(&std::env::var("KIROKU_TEST_POSTGRES_URL").unwrap()).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .batch_execute(&format!(
            "LOCK TABLE {}.checkpoints IN EXCLUSIVE MODE",
            schema.name
        ))
        .await
        .unwrap();
    for round in 1..=6 {
        commands.execute(create(round)).await.unwrap();
        let pid = schema.blocked_writer().await;
        schema
            .admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
    }
    holder.batch_execute("ROLLBACK").await.unwrap();

    assert!(
        caught_up(journal_head(&journal_path)).await,
        "the updater catches up"
    );
    assert!(updater.try_wait().unwrap().is_none(), "it never stopped");
    let state = store.state(ROOMS).await.unwrap();
    assert_eq!(state.dead_letters, 0, "nothing parked");
    assert_eq!(store.dump(ROOMS, 1).await.unwrap().rooms.len(), 7);
    updater.kill().unwrap();
    updater.wait().unwrap();
    drop(write);
    schema.drop_schema().await;
}
