//! The read API's caps through the real binary (`kiroku dev`, caps set by environment
//! variables): consistency waits and live streams are capped per principal and in total; beyond
//! a cap the answer is RESOURCE_EXHAUSTED (HTTP 429) saying which cap; a slot comes back when
//! its wait or stream ends, also when the client just goes away.

mod support;

use std::time::Duration;

use kiroku_proto::v1::command_service_client::CommandServiceClient;
use kiroku_proto::v1::read_service_client::ReadServiceClient;
use kiroku_proto::v1::{self as pb, execute_request::Command as C};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use support::*;

type Reads = ReadServiceClient<InterceptedService<Channel, Who>>;

#[derive(Clone)]
struct Who(&'static str);

impl tonic::service::Interceptor for Who {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut()
            .insert("x-kiroku-principal", self.0.parse().unwrap());
        Ok(r)
    }
}

/// `kiroku dev` with `env`, and room `r1` (ann's) created and already in the views.
async fn dev_with_room(dir: &std::path::Path, env: &[(&str, &str)]) -> Served {
    let k = dev_served_with(dir, &[], env);
    let mut ann = CommandServiceClient::with_interceptor(channel(&k.kiroku.url).await, Who("ann"));
    let created = ann
        .execute(exec(
            "r1",
            "c-create",
            C::CreateRoom(pb::CreateRoom {
                name: "Lobby".into(),
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    reads(&k, "ann")
        .await
        .get_room(get_room(created.version, 5_000))
        .await
        .unwrap();
    k
}

async fn reads(k: &Served, who: &'static str) -> Reads {
    ReadServiceClient::with_interceptor(channel(&k.kiroku.url).await, Who(who))
}

/// `GetRoom r1` consistent with version `version` of r1, waiting at most `timeout_ms`.
fn get_room(version: u64, timeout_ms: u32) -> pb::GetRoomRequest {
    pb::GetRoomRequest {
        room_id: "r1".into(),
        consistency: Some(pb::Consistency {
            aggregate_id: "r1".into(),
            version,
            timeout_ms,
        }),
    }
}

/// A wait that lasts (a version nobody writes), held by a task until it is aborted. Refused
/// while the probes below hold the slot it wants, it asks again.
async fn hold_wait(k: &Served, who: &'static str) -> tokio::task::JoinHandle<()> {
    let client = reads(k, who).await;
    tokio::spawn(async move {
        loop {
            match client.clone().get_room(get_room(1_000, 30_000)).await {
                Err(e) if e.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!("a held wait ended: {other:?}"),
            }
        }
    })
}

/// Asks for a wait (100 ms on a version nobody writes) until the answer is `code`: other
/// answers mean the server has not yet seen the requests before it, or not yet noticed a client
/// leave.
async fn short_wait_until(code: Code, client: &Reads) -> tonic::Status {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = client.clone().get_room(get_room(1_000, 100)).await;
        match answer {
            Err(status) if status.code() == code => return status,
            other => assert!(
                std::time::Instant::now() < deadline,
                "never {code:?}; last: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn consistency_waits_are_capped_per_principal_and_in_total_and_a_client_that_leaves_frees_its_slot()
 {
    let dir = tempfile::tempdir().unwrap();
    let k = dev_with_room(
        dir.path(),
        &[
            ("KIROKU_READ_MAX_WAITS", "3"),
            ("KIROKU_READ_MAX_WAITS_PER_PRINCIPAL", "2"),
        ],
    )
    .await;
    let ann_waits = [hold_wait(&k, "ann").await, hold_wait(&k, "ann").await];
    let ann = reads(&k, "ann").await;
    let refused = short_wait_until(Code::ResourceExhausted, &ann).await;
    assert_eq!(
        refused.message(),
        "too many consistency waits: principal \"ann\" already has 2 open (the limit per \
         principal); retry once one of them has ended"
    );
    // The same over HTTP: 429, the same JSON as every error, and when to retry.
    let http = reqwest::Client::new();
    let answer = http
        .get(format!(
            "{}/v1/rooms/r1?consistent_with=r1:1000&timeout_ms=100",
            k.http
        ))
        .header("x-kiroku-principal", "ann")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 429);
    assert_eq!(answer.headers()["retry-after"], "1");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(body["message"], refused.message());

    // Bob takes the last slot; then the server is full for everybody.
    let bob_wait = hold_wait(&k, "bob").await;
    let mut carol = reads(&k, "carol").await;
    let refused = short_wait_until(Code::ResourceExhausted, &carol).await;
    assert_eq!(
        refused.message(),
        "too many consistency waits: the server already serves 3 (its limit); retry in a moment"
    );
    // A token the view has already reached needs no slot.
    let room = carol.get_room(get_room(1, 100)).await.unwrap().into_inner();
    assert_eq!(room.room_id, "r1");

    // Ann's clients go away mid-wait: their slots come back at once, not after 30 s.
    for wait in &ann_waits {
        wait.abort();
    }
    let late = short_wait_until(Code::DeadlineExceeded, &ann).await;
    assert!(late.message().contains("not yet consistent"), "{late:?}");
    bob_wait.abort();
}

#[tokio::test]
async fn live_streams_are_capped_per_principal_and_in_total_over_grpc_and_sse_and_a_closed_stream_frees_its_slot()
 {
    let dir = tempfile::tempdir().unwrap();
    let k = dev_with_room(
        dir.path(),
        &[
            ("KIROKU_READ_MAX_STREAMS", "2"),
            ("KIROKU_READ_MAX_STREAMS_PER_PRINCIPAL", "1"),
        ],
    )
    .await;
    let watch = || pb::WatchRoomRequest {
        room_id: "r1".into(),
        after_version: 0,
    };
    let sse = |who: &'static str| {
        reqwest::Client::new()
            .get(format!("{}/v1/rooms/r1/live", k.http))
            .header("x-kiroku-principal", who)
            .send()
    };
    let mut ann = reads(&k, "ann").await;
    let mut ann_stream = ann.watch_room(watch()).await.unwrap().into_inner();
    ann_stream
        .message()
        .await
        .unwrap()
        .expect("the first update");
    // Ann's one stream is her share, on either face.
    let refused = ann.watch_room(watch()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "too many live streams: principal \"ann\" already has 1 open (the limit per principal); \
         retry once one of them has ended"
    );
    let answer = sse("ann").await.unwrap();
    assert_eq!(answer.status(), 429);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED");

    // Bob's SSE stream fills the server.
    let bob_sse = sse("bob").await.unwrap();
    assert_eq!(bob_sse.status(), 200);
    let mut carol = reads(&k, "carol").await;
    let refused = carol.watch_room(watch()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("the server already serves 2"),
        "{refused:?}"
    );

    // Ann closes her gRPC stream: carol gets the slot.
    drop(ann_stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let _carol_stream = loop {
        match carol.watch_room(watch()).await {
            Ok(stream) => break stream,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the closed gRPC stream kept its slot"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Bob's SSE client disconnects: ann may open one again.
    drop(bob_sse);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = sse("ann").await.unwrap();
        if answer.status() == 200 {
            break;
        }
        assert_eq!(answer.status(), 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the disconnected SSE stream kept its slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
