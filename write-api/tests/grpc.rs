//! The write API driven over gRPC like a client would.

mod support;

use std::time::Duration;

use kiroku_chat::Room;
use kiroku_core::Aggregate;
use kiroku_proto::v1::{
    self as pb, CommandMeta, GetCommandResultRequest, HistoryRequest, StateAtRequest, WaitMode,
};
use kiroku_write_api::grpc::Auth;
use support::*;
use tonic::Code;

#[tokio::test]
async fn a_room_is_created_and_its_history_says_who_did_what() {
    let app = spawn_app(Auth::Open).await;
    let mut ann = app.commands(As::Principal("ann")).await;
    let created = ann
        .execute(request("lobby", "c1", create("Lobby")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (created.room_id.as_str(), created.version, created.duplicate),
        ("lobby", 1, false)
    );
    ann.execute(request("lobby", "c2", add("bob")))
        .await
        .unwrap();
    let mut bob = app.commands(As::Principal("bob")).await;
    let mut with_corr = request("lobby", "c3", post("hello"));
    with_corr.meta.as_mut().unwrap().correlation_id = "signup-42".into();
    let posted = bob.execute(with_corr).await.unwrap().into_inner();
    assert_eq!(
        (posted.version, posted.first_sequence, posted.last_sequence),
        (3, 3, 3)
    );

    let history = app
        .history(As::Principal("eve"))
        .await
        .get_history(HistoryRequest {
            aggregate_id: "lobby".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.highest_sequence, 3);
    let who: Vec<_> = history
        .events
        .iter()
        .map(|e| (e.sequence, e.principal.as_str(), e.command_id.as_str()))
        .collect();
    assert_eq!(who, [(1, "ann", "c1"), (2, "ann", "c2"), (3, "bob", "c3")]);
    let last = &history.events[2];
    assert_eq!(last.correlation_id, "signup-42");
    assert_eq!(last.causation_id, "c3");
    assert_eq!(last.event_type, "kiroku.chat.v1.MessagePosted");
    assert!(
        last.event_json.contains("\"body\":\"hello\""),
        "{}",
        last.event_json
    );
    let now = kiroku_write_api::runtime::now_ms();
    assert!(
        history
            .events
            .iter()
            .all(|e| e.timestamp_ms > now - 60_000 && e.timestamp_ms <= now)
    );
}

#[tokio::test]
async fn history_pages_and_state_at_any_version_or_moment() {
    let app = spawn_app(Auth::Open).await;
    let mut ann = app.commands(As::Principal("ann")).await;
    ann.execute(request("r", "c0", create("Room")))
        .await
        .unwrap();
    for n in 1..=9 {
        ann.execute(request("r", &format!("c{n}"), post(&format!("m{n}"))))
            .await
            .unwrap();
    }
    let mut history = app.history(As::Principal("ann")).await;
    let mut from = 0;
    let mut seen = Vec::new();
    loop {
        let page = history
            .get_history(HistoryRequest {
                aggregate_id: "r".into(),
                from_sequence: from,
                limit: 4,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.events.iter().map(|e| e.sequence));
        if page.next_sequence == 0 {
            break;
        }
        from = page.next_sequence;
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());

    let at = |at| StateAtRequest {
        aggregate_id: "r".into(),
        at: Some(at),
        ..Default::default()
    };
    use pb::state_at_request::At;
    let v3 = history
        .get_state_at(at(At::Version(3)))
        .await
        .unwrap()
        .into_inner();
    let state: serde_json::Value = serde_json::from_str(&v3.state_json).unwrap();
    assert_eq!(
        (v3.version, state["messages"].as_object().unwrap().len()),
        (3, 2)
    );
    let events = history
        .get_history(HistoryRequest {
            aggregate_id: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let moment = events[5].timestamp_ms;
    let then = history
        .get_state_at(at(At::TimestampMs(moment)))
        .await
        .unwrap()
        .into_inner();
    let expected_version = events.iter().filter(|e| e.timestamp_ms <= moment).count() as u64;
    assert_eq!(then.version, expected_version);
    let before = history
        .get_state_at(at(At::TimestampMs(events[0].timestamp_ms - 1)))
        .await
        .unwrap_err();
    assert_eq!(before.code(), Code::NotFound);
    for bad in [At::Version(0), At::Version(11)] {
        assert_eq!(
            history.get_state_at(at(bad)).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    let none = history
        .get_state_at(StateAtRequest {
            aggregate_id: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
    let too_many = history
        .get_history(HistoryRequest {
            aggregate_id: "r".into(),
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    let unknown_type = HistoryRequest {
        aggregate_type: "invoice".into(),
        aggregate_id: "r".into(),
        ..Default::default()
    };
    assert_eq!(
        history.get_history(unknown_type).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// Each bad command gets the precise status and appends nothing.
#[tokio::test]
async fn bad_commands_get_precise_errors_and_change_nothing() {
    let app = spawn_app(Auth::Open).await;
    let mut ann = app.commands(As::Principal("ann")).await;
    ann.execute(request("lobby", "setup-1", create("Lobby")))
        .await
        .unwrap();
    ann.execute(request("lobby", "setup-2", post("first")))
        .await
        .unwrap();
    let mut archived = request("old", "setup-3", create("Old"));
    ann.execute(archived.clone()).await.unwrap();
    archived.meta.as_mut().unwrap().command_id = "setup-4".into();
    archived.command = Some(pb::execute_request::Command::ArchiveRoom(
        pb::ArchiveRoom {},
    ));
    ann.execute(archived).await.unwrap();
    let message_id = {
        let h = app
            .history(As::Principal("ann"))
            .await
            .get_history(HistoryRequest {
                aggregate_id: "lobby".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&h.into_inner().events[1].event_json).unwrap();
        json["message_id"].as_str().unwrap().to_owned()
    };
    let mut eve = app.commands(As::Principal("eve")).await;
    use pb::execute_request::Command as C;
    let cases: Vec<(&str, Commands, pb::ExecuteRequest, Code, &str)> = vec![
        (
            "unknown room",
            ann.clone(),
            request("nowhere", "b1", post("hi")),
            Code::NotFound,
            "does not exist",
        ),
        (
            "not a member",
            eve.clone(),
            request("lobby", "b2", post("hi")),
            Code::FailedPrecondition,
            "not a member",
        ),
        (
            "not the author",
            eve.clone(),
            request(
                "lobby",
                "b3",
                C::EditMessage(pb::EditMessage {
                    message_id: message_id.clone(),
                    body: "x".into(),
                }),
            ),
            Code::FailedPrecondition,
            "author",
        ),
        (
            "archived",
            ann.clone(),
            request("old", "b4", post("hi")),
            Code::FailedPrecondition,
            "archived",
        ),
        (
            "empty name",
            ann.clone(),
            request("new", "b5", create("")),
            Code::InvalidArgument,
            "empty",
        ),
        (
            "long name",
            ann.clone(),
            request("new", "b6", create(&"n".repeat(101))),
            Code::InvalidArgument,
            "limit is 100",
        ),
        (
            "long body",
            ann.clone(),
            request("lobby", "b7", post(&"b".repeat(4001))),
            Code::InvalidArgument,
            "limit is 4000",
        ),
        (
            "exists",
            ann.clone(),
            request("lobby", "b8", create("Again")),
            Code::AlreadyExists,
            "already exists",
        ),
        (
            "no command",
            ann.clone(),
            pb::ExecuteRequest {
                room_id: "lobby".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "no command",
        ),
        (
            "no room",
            ann.clone(),
            request("", "b9", post("hi")),
            Code::InvalidArgument,
            "room_id",
        ),
        (
            "bad room id",
            ann.clone(),
            request("a b", "b10", post("hi")),
            Code::InvalidArgument,
            "room_id",
        ),
        (
            "bad command id",
            ann.clone(),
            request("lobby", &"x".repeat(129), post("hi")),
            Code::InvalidArgument,
            "command_id",
        ),
    ];
    for (what, mut client, req, code, words) in cases {
        let err = client.execute(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(
            err.message().contains(words),
            "{what}: message {:?} should say {words:?}",
            err.message()
        );
    }
    let mut wrong_mode = request("lobby", "b11", post("hi"));
    wrong_mode.meta.as_mut().unwrap().wait = 42;
    assert_eq!(
        eve.execute(wrong_mode).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(app.highest("lobby").await, 2, "nothing appended to lobby");
    assert_eq!(app.highest("old").await, 2, "nothing appended to old");
    assert_eq!(app.highest("new").await, 0);
    assert_eq!(app.highest("nowhere").await, 0);

    // Expected version: ABORTED, naming the actual version.
    let mut stale = request("lobby", "b12", post("late"));
    stale.meta.as_mut().unwrap().expected_version = Some(1);
    let err = ann.execute(stale).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(err.metadata().get("x-kiroku-actual-version").unwrap(), "2");
    assert!(err.message().contains("version 2"), "{}", err.message());
    assert_eq!(app.highest("lobby").await, 2);
}

#[tokio::test]
async fn a_resent_command_id_returns_the_first_result_and_appends_nothing() {
    let app = spawn_app(Auth::Open).await;
    let mut ann = app.commands(As::Principal("ann")).await;
    // No room id: derived from the command id, so the resend addresses the same room.
    let first = ann
        .execute(request("", "create-once", create("Lobby")))
        .await
        .unwrap()
        .into_inner();
    let again = ann
        .execute(request("", "create-once", create("Lobby")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.room_id, first.room_id);
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(
        (again.version, again.first_sequence),
        (first.version, first.first_sequence)
    );
    let post1 = ann
        .execute(request(&first.room_id, "post-once", post("hi")))
        .await
        .unwrap()
        .into_inner();
    let post2 = ann
        .execute(request(&first.room_id, "post-once", post("hi")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(post2.version, post1.version);
    assert!(post2.duplicate);
    assert_eq!(app.highest(&first.room_id).await, 2);
    // A rejected command id stays rejected, flagged as a replay.
    ann.execute(request(&first.room_id, "bad-once", post("")))
        .await
        .unwrap_err();
    let replay = ann
        .execute(request(&first.room_id, "bad-once", post("now fine")))
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::InvalidArgument);
    assert_eq!(replay.metadata().get("x-kiroku-duplicate").unwrap(), "true");
    assert_eq!(app.highest(&first.room_id).await, 2);
}

#[tokio::test]
async fn accepted_commands_report_their_result_only_to_their_principal() {
    let app = spawn_app(Auth::Open).await;
    let mut ann = app.commands(As::Principal("ann")).await;
    ann.execute(request("lobby", "c1", create("Lobby")))
        .await
        .unwrap();
    let mut async_post = request("lobby", "async-1", post("later"));
    async_post.meta = Some(CommandMeta {
        command_id: "async-1".into(),
        wait: WaitMode::Accepted as i32,
        ..Default::default()
    });
    let reply = ann.execute(async_post).await.unwrap().into_inner();
    assert!(reply.accepted_only);
    assert_eq!(reply.command_id, "async-1");
    let ask = || GetCommandResultRequest {
        command_id: "async-1".into(),
    };
    let mut watch = ann.watch_command(ask()).await.unwrap().into_inner();
    let mut last = None;
    while let Some(r) = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
    {
        last = Some(r);
    }
    let last = last.unwrap();
    assert_eq!(last.state, pb::CommandState::Succeeded as i32);
    assert_eq!(last.reply.unwrap().version, 2);
    let result = ann.get_command_result(ask()).await.unwrap().into_inner();
    assert_eq!(result.state, pb::CommandState::Succeeded as i32);
    // Another principal learns nothing, not even that the id exists.
    let mut eve = app.commands(As::Principal("eve")).await;
    assert_eq!(
        eve.get_command_result(ask()).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        eve.watch_command(ask()).await.unwrap_err().code(),
        Code::NotFound
    );
    // A rejected accepted command reports the rejection.
    let mut bad = request("lobby", "async-2", post(""));
    bad.meta.as_mut().unwrap().wait = WaitMode::Accepted as i32;
    ann.execute(bad).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let r = ann
                .get_command_result(GetCommandResultRequest {
                    command_id: "async-2".into(),
                })
                .await
                .unwrap()
                .into_inner();
            if r.state != pb::CommandState::Pending as i32 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (result.state, result.error_code),
        (
            pb::CommandState::Rejected as i32,
            Code::InvalidArgument as i32
        )
    );
}

const ANN_TOKEN: &str = "ann-secret-token-0001";
const BOB_TOKEN: &str = "bob-secret-token-0002";

#[tokio::test]
async fn tokens_are_required_and_the_principal_comes_from_them() {
    let auth = Auth::from_spec(&format!("{ANN_TOKEN}=ann,{BOB_TOKEN}=bob")).unwrap();
    let app = spawn_app(auth).await;
    for (who, what) in [
        (As::Nobody, "missing"),
        (As::Token("not-a-real-token-at-all"), "unknown"),
        (As::Principal("ann"), "dev header"),
    ] {
        let err = app
            .commands(who.clone())
            .await
            .execute(request("r", "x", create("R")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}");
        let err = app
            .history(who)
            .await
            .get_history(HistoryRequest {
                aggregate_id: "r".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}");
    }
    assert_eq!(app.highest("r").await, 0);
    let mut ann = app.commands(As::Token(ANN_TOKEN)).await;
    ann.execute(request("r", "x", create("R"))).await.unwrap();
    let h = app
        .history(As::Token(BOB_TOKEN))
        .await
        .get_history(HistoryRequest {
            aggregate_id: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h.into_inner().events[0].principal, "ann");
    let mut bob = app.commands(As::Token(BOB_TOKEN)).await;
    assert_eq!(
        bob.get_command_result(GetCommandResultRequest {
            command_id: "x".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        ann.get_command_result(GetCommandResultRequest {
            command_id: "x".into()
        })
        .await
        .unwrap()
        .into_inner()
        .state,
        pb::CommandState::Succeeded as i32
    );
}

/// Raw bytes on the wire: what a broken or hostile client sends.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default, Clone)]
    pub struct Raw;
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            buf.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let v = buf.chunk().to_vec();
            buf.advance(v.len());
            Ok(Some(v))
        }
    }
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused() {
    let app = spawn_app(Auth::Open).await;
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/kiroku.v1.CommandService/Execute");
    for garbage in [vec![0xff, 0xff, 0xff, 0xff], vec![0x12, 0x50, 0x01]] {
        grpc.ready().await.unwrap();
        let err = grpc
            .unary(tonic::Request::new(garbage), path.clone(), raw::Raw)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("malformed"), "{}", err.message());
    }
    let mut ann = app.commands(As::Principal("ann")).await;
    ann.execute(request("lobby", "c1", create("Lobby")))
        .await
        .unwrap();
    let err = ann
        .execute(request("lobby", "huge", post(&"x".repeat(2 * 1024 * 1024))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("limit"), "{}", err.message());
    assert_eq!(app.highest("lobby").await, 1);
}

#[tokio::test]
async fn health_and_reflection_answer() {
    let app = spawn_app(Auth::from_spec(&format!("{ANN_TOKEN}=ann")).unwrap()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "kiroku.v1.CommandService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            app.channel().await,
        );
    let ask = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![ask]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("reflection did not list services")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "kiroku.v1.CommandService",
        "kiroku.v1.HistoryService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
}

/// 1,000 concurrent clients on 100 rooms: every room's history is dense, and the state each
/// aggregate holds in memory equals a replay of its events from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_on_a_hundred_rooms_keep_histories_dense() {
    let app = spawn_app(Auth::Open).await;
    let rooms: Vec<String> = (0..100).map(|i| format!("room-{i}")).collect();
    let mut setup = app.commands(As::Principal("ann")).await;
    for room in &rooms {
        setup
            .execute(request(room, &format!("create-{room}"), create(room)))
            .await
            .unwrap();
    }
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(app.commands(As::Principal("ann")).await);
    }
    let per_client = 4;
    let tasks: Vec<_> = (0..1000)
        .map(|client| {
            let mut c = channels[client % channels.len()].clone();
            let rooms = rooms.clone();
            tokio::spawn(async move {
                for n in 0..per_client {
                    let room = &rooms[(client * 7 + n * 13) % rooms.len()];
                    let req = request(
                        room,
                        &format!("post-{client}-{n}"),
                        post(&format!("{client}/{n}")),
                    );
                    c.execute(req).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut history = app.history(As::Principal("ann")).await;
    let mut total = 0;
    for room in &rooms {
        let mut events = Vec::new();
        let mut from = 1;
        loop {
            let page = history
                .get_history(HistoryRequest {
                    aggregate_id: room.clone(),
                    from_sequence: from,
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            events.extend(page.events);
            if page.next_sequence == 0 {
                break;
            }
            from = page.next_sequence;
        }
        let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{room}: no gap, no duplicate"
        );
        let mut replayed = Room::default();
        for e in &events {
            replayed.apply(&Room::decode(&e.event_type, e.schema_version, &e.payload).unwrap());
        }
        let (resident, version) = app.rooms.inspect(room).await.unwrap();
        assert_eq!(version, seqs.len() as u64);
        assert_eq!(resident, replayed, "{room}: memory equals replay from zero");
        total += events.len();
    }
    assert_eq!(total, rooms.len() + 1000 * per_client);
}
