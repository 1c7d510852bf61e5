//! The read API through the real binary, over gRPC and HTTP/JSON: read-your-writes with
//! consistency tokens, precise errors, live push (gRPC stream and SSE), the standalone
//! `kiroku read-api` behind tokens, and a rebuild while it serves.

mod support;

use std::time::Duration;

use futures::StreamExt;
use kiroku_proto::v1::command_service_client::CommandServiceClient;
use kiroku_proto::v1::read_service_client::ReadServiceClient;
use kiroku_proto::v1::{self as pb, execute_request::Command as C};
use serde_json::Value;
use tonic::Code;

use support::*;

fn create(name: &str) -> C {
    C::CreateRoom(pb::CreateRoom { name: name.into() })
}

fn add(user: &str) -> C {
    C::AddMember(pb::AddMember {
        user_id: user.into(),
    })
}

fn token(room: &str, version: u64) -> Option<pb::Consistency> {
    Some(pb::Consistency {
        aggregate_id: room.into(),
        version,
        timeout_ms: 5_000,
    })
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

type Commands = CommandServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Principal>,
>;
type Reads = ReadServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Principal>,
>;
type Principal = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

fn ann_principal(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut()
        .insert("x-kiroku-principal", "ann".parse().unwrap());
    Ok(r)
}

/// `kiroku dev` in `dir`, with ann's command and read clients, and ann's room `r1` created and
/// already in the views (so it can be watched at once).
async fn dev_with_lobby(dir: &std::path::Path) -> (Served, Commands, Reads) {
    let k = dev_served(dir);
    let channel = channel(&k.kiroku.url).await;
    let mut ann =
        CommandServiceClient::with_interceptor(channel.clone(), ann_principal as Principal);
    let mut reads = ReadServiceClient::with_interceptor(channel, ann_principal as Principal);
    let created = ann
        .execute(exec("r1", "c-create", create("Lobby")))
        .await
        .unwrap()
        .into_inner();
    reads
        .get_room(pb::GetRoomRequest {
            room_id: "r1".into(),
            consistency: token("r1", created.version),
        })
        .await
        .unwrap();
    (k, ann, reads)
}

#[tokio::test]
async fn what_is_written_is_read_back_at_once_with_a_consistency_token() {
    let dir = tempfile::tempdir().unwrap();
    let (k, mut ann, mut reads) = dev_with_lobby(dir.path()).await;
    ann.execute(exec("r1", "c-add", add("bob"))).await.unwrap();
    for i in 1..=5u64 {
        let reply = ann
            .execute(exec("r1", &format!("c-{i}"), post(&format!("hello {i}"))))
            .await
            .unwrap()
            .into_inner();
        // The very next query, with the reply's token, sees the message: over gRPC …
        let room = reads
            .get_room(pb::GetRoomRequest {
                room_id: "r1".into(),
                consistency: token("r1", reply.version),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(room.version >= reply.version);
        assert_eq!(room.message_count, i);
        let page = reads
            .list_messages(pb::ListMessagesRequest {
                room_id: "r1".into(),
                consistency: token("r1", reply.version),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.messages[0].body, format!("hello {i}"));
        assert_eq!(page.messages[0].author, "ann");
        // … and over HTTP.
        let (status, body) = get(&format!(
            "{}/v1/rooms/r1/messages?page_size=1&consistent_with=r1:{}",
            k.http, reply.version
        ))
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["messages"][0]["body"], format!("hello {i}"));
    }

    // Pagination, newest first, over both faces.
    let first = reads
        .list_messages(pb::ListMessagesRequest {
            room_id: "r1".into(),
            page_size: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let bodies = |ms: &[pb::Message]| ms.iter().map(|m| m.body.clone()).collect::<Vec<_>>();
    assert_eq!(bodies(&first.messages), ["hello 5", "hello 4", "hello 3"]);
    let second = reads
        .list_messages(pb::ListMessagesRequest {
            room_id: "r1".into(),
            page_size: 3,
            cursor: first.next_cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bodies(&second.messages), ["hello 2", "hello 1"]);
    assert_eq!(second.next_cursor, "");
    let (_, body) = get(&format!(
        "{}/v1/rooms/r1/messages?page_size=3&cursor={}",
        k.http, first.next_cursor
    ))
    .await;
    assert_eq!(body["messages"][0]["body"], "hello 2");
    assert_eq!(body["next_cursor"], Value::Null);

    // A member's rooms and the room summary.
    let rooms = reads
        .list_member_rooms(pb::ListMemberRoomsRequest {
            user_id: "bob".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert_eq!(rooms.len(), 1);
    assert_eq!(
        (rooms[0].name.as_str(), rooms[0].owner.as_str()),
        ("Lobby", "ann")
    );
    assert_eq!(rooms[0].members, ["ann", "bob"]);
    let (status, body) = get(&format!("{}/v1/members/bob/rooms", k.http)).await;
    assert_eq!(
        (status, &body["rooms"][0]["room_id"]),
        (200, &Value::from("r1"))
    );
    let (_, body) = get(&format!("{}/v1/rooms/r1", k.http)).await;
    assert_eq!(body["message_count"], 5);
    assert_eq!(body["version"], 7);

    // Projection status and metrics: position, head, lag in events.
    let status = reads
        .get_projection_status(pb::GetProjectionStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.projection, "rooms");
    assert_eq!(status.position, 7);
    assert_eq!((status.head, status.lag_events), (Some(7), Some(0)));
    assert_eq!(status.dead_letters, 0);
    let (code, body) = get(&format!("{}/v1/projections/rooms", k.http)).await;
    assert_eq!((code, &body["position"]), (200, &Value::from(7)));
    let metrics = reqwest::get(format!("{}/metrics", k.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kiroku_projection_lag_events{projection=\"rooms\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("kiroku_projection_position{projection=\"rooms\"} 7"));
}

#[tokio::test]
async fn bad_queries_get_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (k, _ann, mut reads) = dev_with_lobby(dir.path()).await;
    let lobby = reads
        .get_room(pb::GetRoomRequest {
            room_id: "r1".into(),
            consistency: None,
        })
        .await
        .unwrap()
        .into_inner();

    let room = |room_id: &str, consistency| pb::GetRoomRequest {
        room_id: room_id.into(),
        consistency,
    };
    let e = reads.get_room(room("nope", None)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("\"nope\" does not exist"), "{e:?}");
    let e = reads.get_room(room("", None)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let messages = |cursor: &str, page_size| pb::ListMessagesRequest {
        room_id: "r1".into(),
        cursor: cursor.into(),
        page_size,
        consistency: None,
    };
    let e = reads.list_messages(messages("bogus", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("not a cursor"), "{e:?}");
    let e = reads.list_messages(messages("", 201)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("1..=200"), "{e:?}");
    let e = reads
        .list_messages(pb::ListMessagesRequest {
            room_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = reads
        .list_member_rooms(pb::ListMemberRoomsRequest {
            user_id: "bob".into(),
            limit: 1001,
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Consistency deadlines: out of range is the caller's mistake …
    let out_of_range = Some(pb::Consistency {
        aggregate_id: "r1".into(),
        version: 1,
        timeout_ms: 30_001,
    });
    let e = reads.get_room(room("r1", out_of_range)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("1..=30000"), "{e:?}");
    // … a version the view has not reached by the deadline is "not yet consistent".
    let ahead = Some(pb::Consistency {
        aggregate_id: "r1".into(),
        version: lobby.version + 10,
        timeout_ms: 200,
    });
    let e = reads.get_room(room("r1", ahead)).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().starts_with("not yet consistent"), "{e:?}");
    assert_eq!(
        e.metadata().get("x-kiroku-applied-version").unwrap(),
        &lobby.version.to_string()
    );

    let e = reads
        .get_projection_status(pb::GetProjectionStatusRequest {
            projection: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // The same over HTTP, with JSON bodies naming the code.
    for (path, status, code, needle) in [
        ("/v1/rooms/nope", 404, "NOT_FOUND", "does not exist"),
        (
            "/v1/rooms/r1/messages?cursor=bogus",
            400,
            "INVALID_ARGUMENT",
            "not a cursor",
        ),
        (
            "/v1/rooms/r1/messages?page_size=0x10",
            400,
            "INVALID_ARGUMENT",
            "page_size",
        ),
        (
            "/v1/rooms/r1?consistent_with=r1",
            400,
            "INVALID_ARGUMENT",
            "ROOM_ID:VERSION",
        ),
        (
            "/v1/rooms/r1?consistent_with=r1:1&timeout_ms=30001",
            400,
            "INVALID_ARGUMENT",
            "out of range",
        ),
        (
            "/v1/rooms/r1?consistent_with=r1:99&timeout_ms=100",
            504,
            "DEADLINE_EXCEEDED",
            "not yet consistent",
        ),
        (
            "/v1/rooms/r1?pagesize=3",
            400,
            "INVALID_ARGUMENT",
            "pagesize",
        ),
        ("/v1/projections/nope", 404, "NOT_FOUND", "no projection"),
        ("/v2/whatever", 404, "NOT_FOUND", "no such route"),
        ("/v1/rooms/%FF", 400, "INVALID_ARGUMENT", "UTF-8"),
    ] {
        let (got, body) = get(&format!("{}{path}", k.http)).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["code"], code, "{path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(needle), "{path}: {message}");
    }
}

/// Collects live updates until `n` messages arrived (or 20 s passed).
async fn grpc_messages(
    mut updates: tonic::Streaming<pb::RoomUpdate>,
    n: usize,
) -> Vec<pb::Message> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        let u = tokio::time::timeout_at(deadline, updates.message())
            .await
            .expect("live updates stalled")
            .unwrap()
            .expect("the stream ended");
        assert!(u.room.is_some(), "a short backlog comes with the summary");
        got.extend(u.messages);
    }
    got
}

/// Reads an SSE response until `n` messages arrived; returns them and the last event id.
async fn sse_messages(response: reqwest::Response, n: usize) -> (Vec<Value>, String) {
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut bytes = response.bytes_stream();
    let (mut buffer, mut got, mut last_id) = (String::new(), Vec::new(), String::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        let chunk = tokio::time::timeout_at(deadline, bytes.next())
            .await
            .expect("SSE stalled")
            .expect("the SSE stream ended")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    last_id = id.to_owned();
                }
                if let Some(data) = line.strip_prefix("data: ") {
                    let update: Value = serde_json::from_str(data).unwrap();
                    got.extend(update["messages"].as_array().unwrap().iter().cloned());
                }
                assert!(!line.starts_with("event: error"), "{event}");
            }
        }
    }
    (got, last_id)
}

#[tokio::test]
async fn live_subscribers_receive_each_new_message_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (k, mut ann, mut reads) = dev_with_lobby(dir.path()).await;
    // A busy neighbour, so the room's updates interleave with other commits.
    let other = ann
        .execute(exec("r2", "c-create-2", create("Other")))
        .await
        .unwrap()
        .into_inner();
    // Both rooms are in the views before anyone watches them.
    reads
        .get_room(pb::GetRoomRequest {
            room_id: "r2".into(),
            consistency: token("r2", other.version),
        })
        .await
        .unwrap();

    let watch = pb::WatchRoomRequest {
        room_id: "r1".into(),
        after_version: 0,
    };
    let grpc = reads.watch_room(watch).await.unwrap().into_inner();
    let sse = reqwest::get(format!("{}/v1/rooms/r1/live", k.http))
        .await
        .unwrap();
    const N: usize = 60;
    let writer = tokio::spawn(async move {
        for i in 0..N {
            ann.execute(exec("r1", &format!("m-{i}"), post(&format!("msg {i}"))))
                .await
                .unwrap();
            ann.execute(exec("r2", &format!("o-{i}"), post("elsewhere")))
                .await
                .unwrap();
        }
        ann
    });
    let expected: Vec<String> = (0..N).map(|i| format!("msg {i}")).collect();
    let got = grpc_messages(grpc, N).await;
    assert_eq!(
        got.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        expected,
        "each message once, in order"
    );
    assert!(got.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let (got, last_id) = sse_messages(sse, N).await;
    assert_eq!(
        got.iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
        expected
    );
    let mut ann = writer.await.unwrap();

    // Resuming with Last-Event-ID delivers only what came after it.
    let resumed = reqwest::Client::new()
        .get(format!("{}/v1/rooms/r1/live", k.http))
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    ann.execute(exec("r1", "after", post("after the reconnect")))
        .await
        .unwrap();
    let (got, _) = sse_messages(resumed, 1).await;
    assert_eq!(got[0]["body"], "after the reconnect");
    assert_eq!(got.len(), 1);

    // Watching a room that does not exist is NOT_FOUND before any stream starts.
    let e = reads
        .watch_room(pb::WatchRoomRequest {
            room_id: "nope".into(),
            after_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let (status, _) = get(&format!("{}/v1/rooms/nope/live", k.http)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn sigterm_ends_live_streams_and_stops_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut k, _ann, mut reads) = dev_with_lobby(dir.path()).await;
    let mut grpc = reads
        .watch_room(pb::WatchRoomRequest {
            room_id: "r1".into(),
            after_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    grpc.message().await.unwrap().expect("the first update");
    let sse = reqwest::get(format!("{}/v1/rooms/r1/live", k.http))
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &k.kiroku.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The streams end (not hang), and the process exits cleanly well within the drain time.
    let ended = tokio::time::timeout(Duration::from_secs(10), grpc.message())
        .await
        .expect("the gRPC stream ended on shutdown");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = k.kiroku.child.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "dev did not stop");
        // Not a blocking sleep: this runtime drives the client connections, which must answer
        // the server's GOAWAY/PING for it to close them.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
    drop(sse);
}

const TOKEN: &str = "0123456789abcdef-token";

fn bearer(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(r)
}

#[tokio::test]
async fn the_standalone_read_api_needs_tokens_and_follows_views_another_process_writes() {
    let dir = tempfile::tempdir().unwrap();
    let journal = format!("sqlite://{}", dir.path().join("journal.db").display());
    let views = format!("sqlite://{}", dir.path().join("views.db").display());
    let tokens = format!("{TOKEN}=ann");

    // No credentials configured: it refuses to start.
    let out = command(
        &[
            "read-api",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[("KIROKU_READ_STORE", &views)],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KIROKU_TOKENS"));

    let writer = start(
        &["write-api", "--listen", "127.0.0.1:0"],
        &[("KIROKU_TOKENS", &tokens), ("KIROKU_JOURNAL", &journal)],
    );
    let (child, _) = start_until(
        &["read-model-updater"],
        &[("KIROKU_JOURNAL", &journal), ("KIROKU_READ_STORE", &views)],
        "projecting",
    );
    let _updater = Kiroku {
        child,
        url: String::new(),
    };
    let reader = start_served(
        &[
            "read-api",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[
            ("KIROKU_TOKENS", &tokens),
            ("KIROKU_READ_STORE", &views),
            ("KIROKU_JOURNAL", &journal),
        ],
    );
    let mut ann = CommandServiceClient::with_interceptor(channel(&writer.url).await, bearer);
    let read_channel = channel(&reader.kiroku.url).await;
    let mut reads = ReadServiceClient::with_interceptor(read_channel.clone(), bearer);
    ann.execute(exec("r1", "c-create", create("Lobby")))
        .await
        .unwrap();
    let reply = ann
        .execute(exec("r1", "c-post", post("across processes")))
        .await
        .unwrap()
        .into_inner();
    let page = reads
        .list_messages(pb::ListMessagesRequest {
            room_id: "r1".into(),
            consistency: token("r1", reply.version),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages[0].body, "across processes");
    let status = reads
        .get_projection_status(pb::GetProjectionStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.head, Some(2), "the head comes from the journal");

    // Without a token, or with a wrong one: UNAUTHENTICATED / 401, on every route but probes.
    let mut anonymous = ReadServiceClient::new(read_channel);
    let e = anonymous
        .get_room(pb::GetRoomRequest {
            room_id: "r1".into(),
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let http = reqwest::Client::new();
    for path in ["/v1/rooms/r1", "/v1/rooms/r1/live", "/metrics"] {
        let r = http
            .get(format!("{}{path}", reader.http))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = http
            .get(format!("{}{path}", reader.http))
            .bearer_auth("not-a-known-token-at-all")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "UNAUTHENTICATED");
    }
    // The dev principal header means nothing here.
    let r = http
        .get(format!("{}/v1/rooms/r1", reader.http))
        .header("x-kiroku-principal", "ann")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!(
            "{}/v1/rooms/r1?consistent_with=r1:{}",
            reader.http, reply.version
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message_count"], 1);
    let r = http
        .get(format!("{}/healthz", reader.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_rebuild_while_the_read_api_serves_keeps_answering_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let k = dev_served(dir.path());
    let mut ann =
        CommandServiceClient::with_interceptor(channel(&k.kiroku.url).await, as_principal("ann"));
    for r in 0..20 {
        let room = format!("room-{r}");
        ann.execute(exec(&room, &format!("create-{r}"), create(&room)))
            .await
            .unwrap();
        for i in 0..25 {
            ann.execute(exec(&room, &format!("p-{r}-{i}"), post(&format!("m{i}"))))
                .await
                .unwrap();
        }
    }
    let reply = ann
        .execute(exec("room-0", "last", post("last")))
        .await
        .unwrap()
        .into_inner();
    let snapshot = || async {
        let mut all = Vec::new();
        for r in 0..20 {
            let (status, body) = get(&format!(
                "{}/v1/rooms/room-{r}/messages?page_size=200&consistent_with=room-0:{}",
                k.http, reply.version
            ))
            .await;
            assert_eq!(status, 200, "{body}");
            all.push(body);
        }
        all
    };
    let before = snapshot().await;

    let journal = format!("sqlite://{}", dir.path().join("journal.db").display());
    let views = format!("sqlite://{}", dir.path().join("views.db").display());
    let rebuild = |batch: &str| {
        command(
            &["rebuild", "rooms", "--batch-size", batch],
            &[("KIROKU_JOURNAL", &journal), ("KIROKU_READ_STORE", &views)],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
    };
    let status = || async { get(&format!("{}/v1/projections/rooms", k.http)).await.1 };

    // A rebuild killed half-way leaves the active version serving and resumes where it stopped.
    let mut first = rebuild("1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = status().await;
        if s["building_version"] == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rebuild never began: {s}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let s = status().await;
    assert_eq!(
        (&s["active_version"], &s["building_version"]),
        (&Value::from(1), &Value::from(2)),
        "{s}"
    );
    assert_eq!(snapshot().await, before);

    // Queries keep answering, with the same views, all through the resumed rebuild and its switch.
    let mut second = rebuild("50");
    let mut rounds = 0;
    let done = loop {
        assert_eq!(snapshot().await, before);
        rounds += 1;
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
    };
    assert!(done.success(), "rebuild failed");
    assert!(rounds >= 1);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut second.stdout.take().unwrap(), &mut out).unwrap();
    assert!(out.contains("as version 2"), "it resumed version 2: {out}");
    assert_eq!(
        snapshot().await,
        before,
        "the rebuilt views equal the live ones"
    );
    let s = status().await;
    assert_eq!(
        (&s["active_version"], &s["building_version"]),
        (&Value::from(2), &Value::Null),
        "{s}"
    );
}
