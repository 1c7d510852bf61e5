//! Two write APIs (two processes) on one journal: each holds the rooms it served in memory, and
//! the other one moves them on behind its back. No answer may come from that stale memory: no
//! rejection is stored for a command that was valid, no expected version is refused falsely, and
//! every history stays dense.

mod support;

use kiroku_proto::v1::command_service_client::CommandServiceClient;
use kiroku_proto::v1::history_service_client::HistoryServiceClient;
use kiroku_proto::v1::{self as pb, CommandMeta, ExecuteRequest, HistoryRequest};
use pb::execute_request::Command as C;
use support::*;
use tonic::transport::Channel;

const MEMBERS: usize = 6;
const ROOMS: usize = 4;

fn tokens() -> String {
    let mut spec = vec!["token-of-ann-000001=ann".to_owned()];
    spec.extend((0..MEMBERS).map(|m| format!("token-of-member-{m:05}=m{m}")));
    spec.join(",")
}

fn token_of(principal: &str) -> String {
    match principal.strip_prefix('m') {
        Some(m) => format!("token-of-member-{:05}", m.parse::<usize>().unwrap()),
        None => "token-of-ann-000001".into(),
    }
}

/// Sends a principal's bearer token with every call.
#[derive(Clone)]
struct Bearer(tonic::metadata::AsciiMetadataValue);

impl Bearer {
    fn of(principal: &str) -> Self {
        Self(format!("Bearer {}", token_of(principal)).parse().unwrap())
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type Client =
    CommandServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

async fn client(url: &str, principal: &str) -> Client {
    CommandServiceClient::with_interceptor(channel(url).await, Bearer::of(principal))
}

fn request(room: &str, id: &str, expected: Option<u64>, command: C) -> ExecuteRequest {
    ExecuteRequest {
        meta: Some(CommandMeta {
            command_id: id.into(),
            expected_version: expected,
            ..Default::default()
        }),
        room_id: room.into(),
        command: Some(command),
    }
}

fn add(member: usize) -> C {
    C::AddMember(pb::AddMember {
        user_id: format!("m{member}"),
    })
}

/// Every command below is valid in the order it is acknowledged, so any refusal is a decision
/// taken from stale memory. Returns the number of events each room must have.
async fn interleave(urls: [&str; 2], room: &str) -> u64 {
    let ann = [client(urls[0], "ann").await, client(urls[1], "ann").await];
    let mut ann = ann;
    let created = ann[0]
        .execute(request(
            room,
            &format!("{room}-create"),
            None,
            C::CreateRoom(pb::CreateRoom { name: room.into() }),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut version = created.version;
    for m in 0..MEMBERS {
        let (adder, poster) = (m % 2, (m + 1) % 2);
        // The room changes in one process ...
        let added = ann[adder]
            .execute(request(room, &format!("{room}-add-{m}"), None, add(m)))
            .await
            .unwrap_or_else(|e| panic!("adding m{m} to {room}: {e:?}"))
            .into_inner();
        assert_eq!(added.version, version + 1, "dense: {added:?}");
        version = added.version;
        // ... and the new member posts through the other one, which last saw the room without
        // them, with no expected version; then through the first, which has not seen that post,
        // naming the version just read.
        let mut member = client(urls[poster], &format!("m{m}")).await;
        let posted = member
            .execute(request(
                room,
                &format!("{room}-post-{m}"),
                None,
                post("hello"),
            ))
            .await
            .unwrap_or_else(|e| panic!("m{m} posting to {room} after being added: {e:?}"))
            .into_inner();
        assert_eq!(posted.version, version + 1);
        version = posted.version;
        // Named with the version just read, through the process that has not seen the post.
        let mut member_at_adder = client(urls[adder], &format!("m{m}")).await;
        let posted = member_at_adder
            .execute(request(
                room,
                &format!("{room}-post-exp-{m}"),
                Some(version),
                post("with the version I read"),
            ))
            .await
            .unwrap_or_else(|e| panic!("m{m} posting at expected version {version}: {e:?}"))
            .into_inner();
        assert_eq!(posted.version, version + 1);
        version = posted.version;
        // Ann touches the room in the posting process too, so both keep it resident.
        let renamed = ann[poster]
            .execute(request(
                room,
                &format!("{room}-rename-{m}"),
                None,
                C::RenameRoom(pb::RenameRoom {
                    name: format!("{room} {m}"),
                }),
            ))
            .await
            .unwrap_or_else(|e| panic!("renaming {room}: {e:?}"))
            .into_inner();
        assert_eq!(renamed.version, version + 1);
        version = renamed.version;
    }
    // An expected version that really is out of date is refused with the journal's version, also
    // by the process whose memory is behind (it last saw the room before the final rename).
    let stale = ann[(MEMBERS - 1) % 2]
        .execute(request(
            room,
            &format!("{room}-stale"),
            Some(version - 1),
            post("late"),
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted, "{stale:?}");
    assert_eq!(
        stale
            .metadata()
            .get("x-kiroku-actual-version")
            .and_then(|v| v.to_str().ok()),
        Some(version.to_string().as_str())
    );
    version
}

async fn check_histories(url: &str, expected: &[(String, u64)]) {
    let mut history = HistoryServiceClient::with_interceptor(channel(url).await, Bearer::of("ann"));
    for (room, events) in expected {
        let entries = history
            .get_history(HistoryRequest {
                aggregate_id: room.clone(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        let sequences: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=*events).collect::<Vec<_>>(), "{room}");
    }
}

async fn run_on(journal: &str) {
    let env = [("KIROKU_JOURNAL", journal), ("KIROKU_TOKENS", &tokens())];
    let args = ["write-api", "--listen", "127.0.0.1:0"];
    let (a, b) = (start(&args, &env), start(&args, &env));
    let rooms: Vec<String> = (0..ROOMS)
        .map(|r| {
            format!(
                "room-{r}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        })
        .collect();
    let versions =
        futures::future::join_all(rooms.iter().map(|room| interleave([&a.url, &b.url], room)))
            .await;
    let expected: Vec<(String, u64)> = rooms.into_iter().zip(versions).collect();
    check_histories(&a.url, &expected).await;
    check_histories(&b.url, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_write_apis_on_one_sqlite_journal_never_store_an_answer_from_stale_memory() {
    let data = tempfile::tempdir().unwrap();
    let journal = format!("sqlite://{}", data.path().join("journal.db").display());
    run_on(&journal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_write_apis_on_one_dynamodb_journal_never_store_an_answer_from_stale_memory() {
    let endpoint = std::env::var("KIROKU_TEST_DYNAMODB_ENDPOINT").expect(
        "KIROKU_TEST_DYNAMODB_ENDPOINT is not set: run the suite with `bash deploy/local/test.sh` \
         (it starts a DynamoDB-compatible server through deploy/local/with-moto.sh)",
    );
    let prefix = format!("two{}_", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let url = format!("dynamodb://?endpoint={endpoint}&region=us-east-1&prefix={prefix}");
    let init = command(&["journal", "init", "--journal", &url], &[])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    run_on(&url).await;
    kiroku_journal_dynamodb::DynamoDbJournal::from_url(&url)
        .await
        .unwrap()
        .delete_tables()
        .await
        .unwrap();
}
