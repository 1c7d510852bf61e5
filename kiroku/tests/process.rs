//! The real `kiroku` binary on random ports, driven like an operator and a client would.

mod support;

use std::time::Duration;

use kiroku_proto::v1::command_service_client::CommandServiceClient;
use kiroku_proto::v1::history_service_client::HistoryServiceClient;
use kiroku_proto::v1::{self as pb, HistoryRequest, execute_request::Command as C};
use std::process::Command;
use tonic::Code;

use support::*;

async fn history(url: &str, room: &str) -> Vec<pb::HistoryEntry> {
    let mut client =
        HistoryServiceClient::with_interceptor(channel(url).await, as_principal("ann"));
    let request = HistoryRequest {
        aggregate_id: room.into(),
        limit: 1000,
        ..Default::default()
    };
    client
        .get_history(request)
        .await
        .unwrap()
        .into_inner()
        .events
}

#[tokio::test]
async fn acknowledged_commands_survive_sigkill_and_resends_stay_idempotent() {
    let data = tempfile::tempdir().unwrap();
    let first = dev(data.path());
    let mut ann =
        CommandServiceClient::with_interceptor(channel(&first.url).await, as_principal("ann"));
    ann.execute(exec(
        "lobby",
        "create",
        C::CreateRoom(pb::CreateRoom {
            name: "Lobby".into(),
        }),
    ))
    .await
    .unwrap();
    let mut last = None;
    for n in 0..20 {
        last = Some(
            ann.execute(exec(
                "lobby",
                &format!("post-{n}"),
                post(&format!("message {n}")),
            ))
            .await
            .unwrap()
            .into_inner(),
        );
    }
    assert_eq!(last.unwrap().version, 21);
    // Kill at once after the last acknowledgement: no graceful anything.
    drop(first);

    let second = dev(data.path());
    let events = history(&second.url, "lobby").await;
    assert_eq!(
        events.len(),
        21,
        "every acknowledged command's events are there"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
        assert_eq!(e.principal, "ann");
        assert!(e.timestamp_ms > 0);
        assert_eq!(
            e.command_id,
            if i == 0 {
                "create".to_owned()
            } else {
                format!("post-{}", i - 1)
            }
        );
    }
    // The same command id after the restart: the first result, nothing appended.
    let mut ann =
        CommandServiceClient::with_interceptor(channel(&second.url).await, as_principal("ann"));
    let again = ann
        .execute(exec("lobby", "post-7", post("message 7")))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!((again.version, again.first_sequence), (9, 9));
    assert_eq!(history(&second.url, "lobby").await.len(), 21);
}

#[tokio::test]
async fn sigterm_drains_and_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let mut server = dev(data.path());
    let mut ann =
        CommandServiceClient::with_interceptor(channel(&server.url).await, as_principal("ann"));
    ann.execute(exec(
        "r",
        "c1",
        C::CreateRoom(pb::CreateRoom { name: "R".into() }),
    ))
    .await
    .unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let exit = server.child.wait().unwrap();
        drop(server);
        exit
    });
    let exit = tokio::time::timeout(Duration::from_secs(20), exit)
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let again = dev(data.path());
    assert_eq!(history(&again.url, "r").await.len(), 1);
}

#[test]
fn services_refuse_to_start_without_credentials_outside_dev() {
    let data = tempfile::tempdir().unwrap();
    let journal = data.path().join("j.db");
    let out = command(
        &[
            "write-api",
            "--listen",
            "127.0.0.1:0",
            "--journal",
            journal.to_str().unwrap(),
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("KIROKU_TOKENS"), "{stderr}");
    assert!(!journal.exists(), "nothing was created");

    let out = command(
        &[
            "dev",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));

    let out = command(
        &["write-api", "--listen", "127.0.0.1:0"],
        &[("KIROKU_TOKENS", "short=ann")],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("16 characters"));
}

#[tokio::test]
async fn write_api_alone_is_configured_by_environment_and_demands_tokens() {
    let data = tempfile::tempdir().unwrap();
    let journal = format!("sqlite://{}", data.path().join("journal.db").display());
    let server = start(
        &["write-api"],
        &[
            ("KIROKU_LISTEN", "127.0.0.1:0"),
            ("KIROKU_JOURNAL", &journal),
            ("KIROKU_TOKENS", "ann-secret-token-0001=ann"),
        ],
    );
    let mut anonymous = CommandServiceClient::new(channel(&server.url).await);
    let create = || {
        exec(
            "r",
            "c1",
            C::CreateRoom(pb::CreateRoom { name: "R".into() }),
        )
    };
    assert_eq!(
        anonymous.execute(create()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut impostor =
        CommandServiceClient::with_interceptor(channel(&server.url).await, as_principal("ann"));
    assert_eq!(
        impostor.execute(create()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let token = |mut r: tonic::Request<()>| {
        r.metadata_mut().insert(
            "authorization",
            "Bearer ann-secret-token-0001".parse().unwrap(),
        );
        Ok(r)
    };
    let mut ann = CommandServiceClient::with_interceptor(channel(&server.url).await, token);
    assert_eq!(ann.execute(create()).await.unwrap().into_inner().version, 1);
}

#[tokio::test]
async fn the_command_line_client_sends_commands_and_shows_history() {
    let data = tempfile::tempdir().unwrap();
    let server = dev(data.path());
    let url = server.url.clone();
    let run = move |args: &[&str]| {
        let out = command(args, &[("KIROKU_SERVER", &url)]).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = std::sync::Arc::new(run);
    let r = run.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        vec![
            r(&["room", "create", "Lobby", "--room", "lobby", "--as", "ann"]),
            r(&["room", "add-member", "lobby", "bob", "--as", "ann"]),
            r(&[
                "room",
                "post",
                "lobby",
                "hello from bob",
                "--as",
                "bob",
                "--command-id",
                "bob-1",
            ]),
            r(&[
                "room",
                "post",
                "lobby",
                "hello from bob",
                "--as",
                "bob",
                "--command-id",
                "bob-1",
            ]),
            r(&["room", "post", "lobby", "eve was here", "--as", "eve"]),
            r(&["history", "lobby"]),
            r(&["state-at", "lobby", "--version", "2"]),
        ]
    })
    .await
    .unwrap();
    assert!(
        outputs[0].0 && outputs[0].1.contains("room_id=lobby"),
        "{:?}",
        outputs[0]
    );
    assert!(outputs[2].1.contains("version=3"), "{:?}", outputs[2]);
    assert!(outputs[3].1.contains("duplicate=true"), "{:?}", outputs[3]);
    let (ok, _, err) = &outputs[4];
    assert!(
        !ok && err.contains("FailedPrecondition") && err.contains("not a member"),
        "{err}"
    );
    assert!(!err.contains("backtrace"), "errors are for people: {err}");
    let history = &outputs[5].1;
    assert_eq!(history.lines().count(), 4, "{history}");
    assert!(
        history.contains("bob-1") && history.contains("hello from bob"),
        "{history}"
    );
    assert!(
        outputs[6].1.contains("\"members\":[\"ann\",\"bob\"]"),
        "{:?}",
        outputs[6]
    );
}

/// `kiroku dev` runs unchanged on the DynamoDB journal (the moto server started by
/// `deploy/local/with-moto.sh`): tables created at start, history intact after a SIGKILL.
#[tokio::test]
async fn dev_runs_on_the_dynamodb_journal_and_keeps_history_across_a_kill() {
    let endpoint = std::env::var("KIROKU_TEST_DYNAMODB_ENDPOINT").expect(
        "KIROKU_TEST_DYNAMODB_ENDPOINT is not set: run the suite with `bash deploy/local/test.sh` \
         (it starts a DynamoDB-compatible server through deploy/local/with-moto.sh)",
    );
    let prefix = format!("dev{}_", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let url = format!("dynamodb://?endpoint={endpoint}&region=us-east-1&prefix={prefix}");
    let data = tempfile::tempdir().unwrap();
    let args = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().unwrap(),
    ];
    let first = start(&args, &[("KIROKU_JOURNAL", &url)]);
    let mut ann =
        CommandServiceClient::with_interceptor(channel(&first.url).await, as_principal("ann"));
    ann.execute(exec(
        "lobby",
        "create",
        C::CreateRoom(pb::CreateRoom {
            name: "Lobby".into(),
        }),
    ))
    .await
    .unwrap();
    for n in 0..5 {
        ann.execute(exec(
            "lobby",
            &format!("post-{n}"),
            post(&format!("message {n}")),
        ))
        .await
        .unwrap();
    }
    drop(first);
    assert!(
        !data.path().join("journal.db").exists(),
        "the embedded journal was not used"
    );

    let second = start(&args, &[("KIROKU_JOURNAL", &url)]);
    let events = history(&second.url, "lobby").await;
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(events[3].command_id, "post-2");
    let mut ann =
        CommandServiceClient::with_interceptor(channel(&second.url).await, as_principal("ann"));
    let again = ann
        .execute(exec("lobby", "post-4", post("message 4")))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate, "resend after restart is recognised");
    let next = ann
        .execute(exec("lobby", "post-5", post("message 5")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.version, 7);
    drop(second);
    let journal = kiroku_journal_dynamodb::DynamoDbJournal::from_url(&url)
        .await
        .unwrap();
    journal.delete_tables().await.unwrap();
}
