//! `WAIT_MODE_PROJECTED` when the read model fails during the wait: the command is durable, so
//! the reply is its success with `projected = false`, never an error. A projection wait that
//! fails stands in for a read store that breaks (fault injection).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kiroku_chat::Room;
use kiroku_journal::{SqliteJournal, SqliteJournalOptions};
use kiroku_proto::v1::command_service_client::CommandServiceClient;
use kiroku_proto::v1::{CommandMeta, ExecuteRequest, WaitMode, execute_request::Command};
use kiroku_write_api::grpc::{Auth, ProjectionWait, WriteApi, WriteApiConfig};
use kiroku_write_api::runtime::{AggregateRuntime, RuntimeConfig};

use support::{create, post};

/// A read model whose store fails every wait, with the kind of text a real one would give.
struct BrokenReadStore {
    waits: AtomicU64,
}

#[tonic::async_trait]
impl ProjectionWait for BrokenReadStore {
    async fn wait_projected(&self, _: &str, _: u64, _: Duration) -> Result<bool, String> {
        self.waits.fetch_add(1, Ordering::SeqCst);
        Err("read store error: no such table: applied_v1".into())
    }
}

/// Ann, in dev mode's principal header.
fn ann(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut()
        .insert("x-kiroku-principal", "ann".parse().unwrap());
    Ok(r)
}

type Ann = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

fn projected(room: &str, command_id: &str, command: Command) -> ExecuteRequest {
    ExecuteRequest {
        meta: Some(CommandMeta {
            command_id: command_id.into(),
            wait: WaitMode::Projected as i32,
            ..Default::default()
        }),
        room_id: room.into(),
        command: Some(command),
    }
}

#[tokio::test]
async fn a_read_store_failing_during_a_projected_wait_still_answers_the_durable_success() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(
        dir.path().join("journal.db"),
        SqliteJournalOptions::default(),
    )
    .unwrap();
    let rooms = AggregateRuntime::<Room>::new(Arc::new(journal), RuntimeConfig::default());
    let broken = Arc::new(BrokenReadStore {
        waits: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let api = WriteApi {
        rooms: rooms.clone(),
        auth: Auth::Open,
        config: WriteApiConfig::default(),
        projections: Some(broken.clone()),
        extra_routes: None,
    };
    tokio::spawn(api.serve(listener, async move {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ann = CommandServiceClient::with_interceptor(channel, ann as Ann);

    let created = ann
        .execute(projected("r", "c1", create("Room")))
        .await
        .expect("a durable command is a success")
        .into_inner();
    assert_eq!((created.version, created.projected), (1, false));
    let posted = ann
        .execute(projected("r", "c2", post("hello")))
        .await
        .expect("a durable command is a success")
        .into_inner();
    assert_eq!(
        (posted.version, posted.projected, posted.duplicate),
        (2, false, false)
    );
    assert_eq!(broken.waits.load(Ordering::SeqCst), 2);
    // Both are in the journal, as the replies said.
    assert_eq!(rooms.inspect("r").await.unwrap().1, 2);
    // A resend is recognised as the same command.
    let again = ann
        .execute(projected("r", "c2", post("hello")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.version, again.duplicate), (2, true));
    let _ = stop.send(());
}
