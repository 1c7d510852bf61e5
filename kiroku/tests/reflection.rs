//! gRPC server reflection through the real binary: every server (`dev`, the write API alone, the
//! read API alone) answers both protocol versions — `v1` (grpcurl) and `v1alpha` (Google's
//! Python grpcio-reflection client and older tools, which speak only that one).

mod support;

use tonic::transport::Channel;
use tonic_reflection::pb::{v1, v1alpha};

use support::*;

const TOKENS: &str = "ann-secret-token-0001=ann";

/// The services a `v1alpha` reflection client is told of.
async fn v1alpha_services(channel: Channel) -> Vec<String> {
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![ask]))
        .await
        .expect("v1alpha reflection answers")
        .into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("v1alpha reflection did not list services: {other:?}"),
    }
}

/// The services a `v1` reflection client is told of.
async fn v1_services(channel: Channel) -> Vec<String> {
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![ask]))
        .await
        .expect("v1 reflection answers")
        .into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("v1 reflection did not list services: {other:?}"),
    }
}

/// The descriptor of the file that defines `symbol`, as a `v1alpha` client asks for it before
/// it can call a method.
async fn v1alpha_file_of(channel: Channel, symbol: &str) -> usize {
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![ask]))
        .await
        .unwrap()
        .into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto.len(),
        other => panic!("no descriptor of {symbol}: {other:?}"),
    }
}

async fn assert_lists(url: &str, expected: &[&str]) {
    let v1alpha = v1alpha_services(channel(url).await).await;
    let v1 = v1_services(channel(url).await).await;
    for service in expected {
        assert!(
            v1alpha.iter().any(|s| s == service),
            "{url}: {service} missing from the v1alpha list {v1alpha:?}"
        );
        assert!(
            v1.iter().any(|s| s == service),
            "{url}: {service} missing from the v1 list {v1:?}"
        );
    }
}

#[tokio::test]
async fn every_server_answers_v1alpha_reflection_clients_beside_v1() {
    let data = tempfile::tempdir().unwrap();
    let journal = format!("sqlite://{}", data.path().join("journal.db").display());
    let views = format!("sqlite://{}", data.path().join("views.db").display());

    let dev = dev(&data.path().join("dev"));
    assert_lists(
        &dev.url,
        &[
            "kiroku.v1.CommandService",
            "kiroku.v1.HistoryService",
            "kiroku.v1.ReadService",
            "grpc.health.v1.Health",
        ],
    )
    .await;
    assert!(v1alpha_file_of(channel(&dev.url).await, "kiroku.v1.ReadService").await > 0);

    let writer = start(
        &["write-api", "--listen", "127.0.0.1:0"],
        &[("KIROKU_TOKENS", TOKENS), ("KIROKU_JOURNAL", &journal)],
    );
    assert_lists(
        &writer.url,
        &[
            "kiroku.v1.CommandService",
            "kiroku.v1.HistoryService",
            "grpc.health.v1.Health",
        ],
    )
    .await;

    let reader = start_served(
        &[
            "read-api",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[
            ("KIROKU_TOKENS", TOKENS),
            ("KIROKU_READ_STORE", &views),
            ("KIROKU_JOURNAL", &journal),
        ],
    );
    assert_lists(
        &reader.kiroku.url,
        &["kiroku.v1.ReadService", "grpc.health.v1.Health"],
    )
    .await;
}
