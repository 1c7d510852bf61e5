//! `kiroku bench push`: from a command's acknowledgement to its message arriving at a live
//! subscriber of the read API over gRPC (WatchRoom), under a sustained load: the end-to-end
//! latency a chat client sees.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use kiroku_chat::Room;
use kiroku_proto::v1::read_service_client::ReadServiceClient;
use kiroku_proto::v1::{self as pb};
use kiroku_read_api::{Head, LiveStreams, ReadApi, ReadQueries};
use kiroku_write_api::grpc::Auth;
use kiroku_write_api::runtime::{AggregateRuntime, RuntimeConfig};

use super::bench::print_latency;
use super::bench_read::{embedded_read_side, sustained_posts};

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Commands per second to sustain.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rooms, each followed by one live subscriber.
    #[arg(long, default_value_t = 200)]
    rooms: u64,
}

type Arrivals = Arc<parking_lot::Mutex<HashMap<(String, u64), Instant>>>;

pub async fn push(a: PushArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (opened, side) = embedded_read_side(dir.path(), None).await?;
    // The read API as `kiroku dev` serves it, on a random port.
    let api = ReadApi::new(
        ReadQueries::new(side.store.clone(), Head::Updater(side.progress.clone())),
        Auth::Open,
    )
    .with_live(LiveStreams::default().following(side.changes.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(api.grpc_routes())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let runtime = AggregateRuntime::<Room>::new(opened.port(), RuntimeConfig::default());
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let arrivals: Arrivals = Default::default();
    // Rooms are created by the load below; subscribe once each exists.
    let subscribers = tokio::spawn(subscribe_all(channel, a.rooms, arrivals.clone()));
    let (acks, elapsed) = sustained_posts(&runtime, a.rooms, a.rate, a.seconds).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let got = arrivals.lock().len();
        if got >= acks.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    subscribers.abort();
    server.abort();
    let arrivals = std::mem::take(&mut *arrivals.lock());
    let mut hist = Histogram::<u64>::new(3)?;
    let mut missing = 0;
    for (room, version, acked) in &acks {
        match arrivals.get(&(room.clone(), *version)) {
            // A push can beat the acknowledgement to the client: that is 0.
            Some(at) => hist.record(at.saturating_duration_since(*acked).as_micros() as u64)?,
            None => missing += 1,
        }
    }
    println!(
        "bench push: {} commands at {:.0}/s over {} rooms, one live gRPC subscriber each; ack -> message pushed to the subscriber:",
        acks.len(),
        acks.len() as f64 / elapsed.as_secs_f64(),
        a.rooms
    );
    print_latency(&hist);
    if missing > 0 {
        println!("  {missing} messages never arrived within 60 s");
    }
    side.stop().await?;
    Ok(())
}

/// One WatchRoom stream per room; records when each message first arrives.
async fn subscribe_all(channel: tonic::transport::Channel, rooms: u64, arrivals: Arrivals) {
    let mut tasks = Vec::new();
    for r in 0..rooms {
        let (channel, arrivals) = (channel.clone(), arrivals.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = ReadServiceClient::new(channel);
            let room = format!("room-{r}");
            // The room may not be projected yet: retry until it is.
            let mut updates = loop {
                match client
                    .watch_room(pb::WatchRoomRequest {
                        room_id: room.clone(),
                        after_version: 0,
                    })
                    .await
                {
                    Ok(s) => break s.into_inner(),
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            };
            while let Ok(Some(update)) = updates.message().await {
                let now = Instant::now();
                let mut arrivals = arrivals.lock();
                for m in update.messages {
                    arrivals.entry((room.clone(), m.sequence)).or_insert(now);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
