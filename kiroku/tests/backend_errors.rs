//! Backend failures through the real binary (`kiroku dev`): the client gets a fixed message
//! with an error id (also in `x-kiroku-error-id`), never the backend's text (SQL here; table
//! ARNs and account ids on DynamoDB); and a command sent with `WAIT_MODE_PROJECTED` stays a
//! success when the read store fails during the wait. The failures are real: columns the
//! services read are dropped from their SQLite files behind their backs.

mod support;

use kiroku_proto::v1::command_service_client::CommandServiceClient;
use kiroku_proto::v1::history_service_client::HistoryServiceClient;
use kiroku_proto::v1::read_service_client::ReadServiceClient;
use kiroku_proto::v1::{self as pb, CommandMeta, ExecuteRequest, WaitMode};
use tonic::Code;

use support::*;

/// What the answer must never contain: the SQLite error and the schema it names.
const BACKEND_WORDS: [&str; 6] = [
    "no such column",
    "no such table",
    "rooms_v",
    "applied_v",
    "principal",
    "SQL",
];

/// The status is `code` with a generic message naming the id that is also in its metadata.
fn assert_generic(status: &tonic::Status, code: Code) {
    assert_eq!(status.code(), code, "{status:?}");
    let id = status
        .metadata()
        .get("x-kiroku-error-id")
        .unwrap_or_else(|| panic!("no error id: {status:?}"))
        .to_str()
        .unwrap();
    assert!(
        status.message().contains(&format!("(id {id})")),
        "{status:?}"
    );
    for word in BACKEND_WORDS {
        assert!(!status.message().contains(word), "{word:?} in {status:?}");
    }
}

fn sqlite(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    conn
}

#[tokio::test]
async fn a_read_store_that_fails_answers_a_generic_error_with_an_id_and_projected_commands_still_succeed()
 {
    let dir = tempfile::tempdir().unwrap();
    let k = dev_served(dir.path());
    let channel = channel(&k.kiroku.url).await;
    let mut ann = CommandServiceClient::with_interceptor(channel.clone(), as_principal("ann"));
    let mut reads = ReadServiceClient::with_interceptor(channel, as_principal("ann"));
    let created = ann
        .execute(exec(
            "r1",
            "c1",
            pb::execute_request::Command::CreateRoom(pb::CreateRoom {
                name: "Lobby".into(),
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    let room = |version| pb::GetRoomRequest {
        room_id: "r1".into(),
        consistency: Some(pb::Consistency {
            aggregate_id: "r1".into(),
            version,
            timeout_ms: 5_000,
        }),
    };
    reads.get_room(room(created.version)).await.unwrap();

    // The read store loses columns every query reads.
    let views = sqlite(&dir.path().join("views.db"));
    let active: i64 = views
        .query_row(
            "SELECT active_version FROM projections WHERE name = 'rooms'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    views
        .execute_batch(&format!(
            "ALTER TABLE rooms_v{active} DROP COLUMN name;
             ALTER TABLE applied_v{active} DROP COLUMN sequence;"
        ))
        .unwrap();

    // gRPC: INTERNAL with an id, with and without a consistency token.
    let plain = reads
        .get_room(pb::GetRoomRequest {
            room_id: "r1".into(),
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_generic(&plain, Code::Internal);
    let waited = reads.get_room(room(created.version)).await.unwrap_err();
    assert_generic(&waited, Code::Internal);
    // HTTP: 500, the id in the body and in the header.
    let answer = reqwest::Client::new()
        .get(format!("{}/v1/rooms/r1", k.http))
        .header("x-kiroku-principal", "ann")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 500);
    let id = answer.headers()["x-kiroku-error-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "INTERNAL");
    assert_eq!(body["error_id"], id.as_str());
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&format!("(id {id})")), "{body}");
    for word in BACKEND_WORDS {
        assert!(!message.contains(word), "{word:?} in {body}");
    }

    // A projected command is durable whatever the read store does: success, not projected.
    let reply = ann
        .execute(ExecuteRequest {
            meta: Some(CommandMeta {
                command_id: "c2".into(),
                wait: WaitMode::Projected as i32,
                ..Default::default()
            }),
            room_id: "r1".into(),
            command: Some(post("hello")),
        })
        .await
        .expect("a durable command is a success")
        .into_inner();
    assert_eq!((reply.version, reply.projected), (2, false));
}

#[tokio::test]
async fn a_journal_that_fails_answers_a_generic_error_with_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let k = dev_served(dir.path());
    let channel = channel(&k.kiroku.url).await;
    let mut ann = CommandServiceClient::with_interceptor(channel.clone(), as_principal("ann"));
    let mut history = HistoryServiceClient::with_interceptor(channel, as_principal("ann"));
    ann.execute(exec(
        "r1",
        "c1",
        pb::execute_request::Command::CreateRoom(pb::CreateRoom {
            name: "Lobby".into(),
        }),
    ))
    .await
    .unwrap();

    // The journal loses a column every event read needs.
    sqlite(&dir.path().join("journal.db"))
        .execute_batch("ALTER TABLE events DROP COLUMN principal;")
        .unwrap();

    let failed = history
        .get_history(pb::HistoryRequest {
            aggregate_id: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_generic(&failed, Code::Internal);
    // A room that is not resident must be loaded from the journal first.
    let failed = ann
        .execute(exec("r2", "c2", post("hello")))
        .await
        .unwrap_err();
    assert_generic(&failed, Code::Internal);
}
