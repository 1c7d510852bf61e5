//! `kiroku bench rebuild` and `kiroku bench lag`: the read side's numbers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use kiroku_chat::{Room, RoomCommand, RoomEvent};
use kiroku_core::{Aggregate, Caller};
use kiroku_journal::{
    AppendRequest, EventMetadata, Journal, NewEvent, SqliteJournal, SqliteJournalOptions, StreamId,
};
use kiroku_read_model_updater::{ReadStore, RoomsProjection, rebuild};
use kiroku_write_api::runtime::{AggregateRuntime, CommandMeta, RuntimeConfig};

use super::bench::print_latency;
use super::read::{ReadSide, UpdaterArgs, open_read_store};
use crate::journal_url::{Opened, SqliteArgs};

#[derive(Args, Debug)]
pub struct RebuildBenchArgs {
    /// Events in the journal to replay.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Rooms they are spread over.
    #[arg(long, default_value_t = 1_000)]
    rooms: u64,
    /// Events per read-store transaction.
    #[arg(long, default_value_t = 5_000)]
    batch_size: usize,
    /// Also rebuild into this PostgreSQL database (a fresh schema, dropped afterwards).
    #[arg(long, env = "KIROKU_BENCH_POSTGRES")]
    postgres: Option<String>,
}

fn encoded(event: &RoomEvent) -> NewEvent {
    let e = Room::encode(event);
    NewEvent {
        event_type: e.event_type,
        schema_version: e.schema_version,
        payload: e.payload,
    }
}

/// A journal of `events` room events: each room created, then posts with ~100-byte bodies.
async fn fill(journal: &SqliteJournal, events: u64, rooms: u64) -> anyhow::Result<()> {
    let per_room = (events / rooms).max(1);
    let chunk = 100u64;
    let mut pending = Vec::new();
    for r in 0..rooms {
        let journal = journal.clone();
        pending.push(tokio::spawn(async move {
            let stream = StreamId::new(Room::TYPE, format!("room-{r}"));
            let mut seq = 0;
            while seq < per_room {
                let n = chunk.min(per_room - seq);
                let events = (seq..seq + n)
                    .map(|i| {
                        encoded(&if i == 0 {
                            RoomEvent::Created {
                                name: format!("room {r}"),
                                owner: "bench".into(),
                            }
                        } else {
                            RoomEvent::MessagePosted {
                                message_id: format!("m{i}"),
                                author: "bench".into(),
                                body: "x".repeat(100),
                            }
                        })
                    })
                    .collect();
                journal
                    .append(AppendRequest {
                        stream: stream.clone(),
                        expected_sequence: seq,
                        events,
                        metadata: EventMetadata {
                            command_id: format!("fill-{r}-{seq}"),
                            principal: "bench".into(),
                            timestamp_ms: 1_700_000_000_000,
                            ..Default::default()
                        },
                    })
                    .await?;
                seq += n;
            }
            anyhow::Ok(())
        }));
        if pending.len() >= 64 {
            for p in pending.drain(..) {
                p.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }
    Ok(())
}

pub async fn rebuild_rate(a: RebuildBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let journal = SqliteJournal::open(
        dir.path().join("journal.db"),
        SqliteJournalOptions::default(),
    )?;
    let t = Instant::now();
    fill(&journal, a.events, a.rooms).await?;
    let head = journal.head_position().await?.unwrap_or(0);
    println!(
        "bench rebuild: journal of {head} events over {} rooms filled in {:.1} s",
        a.rooms,
        t.elapsed().as_secs_f64()
    );
    let port: Arc<dyn Journal> = Arc::new(journal);
    let mut targets = vec![(
        "SQLite".to_owned(),
        format!("sqlite://{}", dir.path().join("views.db").display()),
        None,
    )];
    if let Some(url) = &a.postgres {
        let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let (admin, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await?;
        let sep = if url.contains('?') { '&' } else { '?' };
        targets.push((
            "PostgreSQL".to_owned(),
            format!("{url}{sep}options=-c%20search_path%3D{schema}"),
            Some((admin, schema)),
        ));
    }
    for (name, url, cleanup) in targets {
        let store = open_read_store(&url, &SqliteArgs::default()).await?;
        let done = rebuild::rebuild(
            store.clone(),
            port.clone(),
            Arc::new(RoomsProjection),
            a.batch_size,
            |_| {},
        )
        .await?;
        println!(
            "  into {name}: {} events in {:.2} s = {:.0} events/s (batches of {})",
            done.events,
            done.elapsed.as_secs_f64(),
            done.events_per_second(),
            a.batch_size
        );
        if let Some((admin, schema)) = cleanup {
            admin
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await?;
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct LagArgs {
    /// Commands per second to sustain.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 1_000)]
    rooms: u64,
    /// Read store (default: a SQLite file in a temporary directory).
    #[arg(long)]
    read_store: Option<String>,
}

/// Projection lag: from a command's acknowledgement (its events durable) to the moment the
/// updater has committed them to the views (a read-API query sees them from then on).
pub async fn lag(a: LagArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (opened, side) = embedded_read_side(dir.path(), a.read_store.clone()).await?;
    // Every committed position, with when it became visible.
    let mut progress = side.progress.clone();
    let observer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while progress.changed().await.is_ok() {
            let position = progress.borrow_and_update().position;
            seen.push((Instant::now(), position));
        }
        seen
    });
    let rooms = AggregateRuntime::<Room>::new(opened.port(), RuntimeConfig::default());
    let (acks, elapsed) = sustained_posts(&rooms, a.rooms, a.rate, a.seconds).await?;
    let head = opened.port().head_position().await?.unwrap_or(0);
    let mut progress = side.progress.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        progress.wait_for(|p| p.position >= head),
    )
    .await??;
    side.stop().await?;
    let seen = observer.await?;
    // Global position of each (room, version).
    let mut position = HashMap::new();
    let mut after = 0;
    loop {
        let batch = opened.port().read_all(after, 10_000).await?;
        let Some(last) = batch.last() else { break };
        after = last.global_position;
        for e in batch {
            position.insert((e.stream.aggregate_id, e.sequence), e.global_position);
        }
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for (room, version, acked) in &acks {
        let p = position[&(room.clone(), *version)];
        let i = seen.partition_point(|(_, pos)| *pos < p);
        let visible = seen.get(i).map(|(t, _)| *t).unwrap_or_else(Instant::now);
        hist.record(visible.saturating_duration_since(*acked).as_micros() as u64)?;
    }
    println!(
        "bench lag: {} commands at {:.0}/s over {} rooms; ack -> visible in the views:",
        hist.len(),
        hist.len() as f64 / elapsed.as_secs_f64(),
        a.rooms
    );
    print_latency(&hist);
    Ok(())
}

/// Creates `rooms` rooms, then posts to them round-robin at `rate` commands/s for `seconds`.
/// Returns each acknowledged post as (room, version, when acknowledged), and the time it took.
pub(super) async fn sustained_posts(
    runtime: &AggregateRuntime<Room>,
    rooms: u64,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(Vec<(String, u64, Instant)>, Duration)> {
    let meta = |id: String| CommandMeta {
        command_id: id,
        caller: Caller::new("bench"),
        expected_version: None,
        correlation_id: String::new(),
        causation_id: String::new(),
    };
    for r in 0..rooms {
        runtime
            .execute(
                &format!("room-{r}"),
                RoomCommand::Create {
                    name: format!("room {r}"),
                },
                meta(format!("create-{r}")),
            )
            .await?;
    }
    let acks = Arc::new(parking_lot::Mutex::new(Vec::<(String, u64, Instant)>::new()));
    let start = Instant::now();
    let total = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    let mut tasks = Vec::new();
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let (runtime, acks) = (runtime.clone(), acks.clone());
            let room = format!("room-{}", sent % rooms);
            let id = format!("post-{sent}");
            tasks.push(tokio::spawn(async move {
                let done = runtime
                    .execute(
                        &room,
                        RoomCommand::PostMessage {
                            message_id: id.clone(),
                            body: "x".repeat(100),
                        },
                        meta(id),
                    )
                    .await;
                if let Ok(done) = done {
                    acks.lock().push((room, done.version, Instant::now()));
                }
            }));
            sent += 1;
        }
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed();
    let acks = std::mem::take(&mut *acks.lock());
    Ok((acks, elapsed))
}

/// A fresh SQLite journal in `dir` with the rooms projection following it in this process, as
/// `kiroku dev` runs them (views in `read_store`, or a SQLite file in `dir`).
pub(super) async fn embedded_read_side(
    dir: &std::path::Path,
    read_store: Option<String>,
) -> anyhow::Result<(Opened, ReadSide)> {
    let journal = SqliteJournal::open(dir.join("journal.db"), SqliteJournalOptions::default())?;
    let opened = Opened::Sqlite(journal);
    let store: Arc<dyn ReadStore> = open_read_store(
        &read_store.unwrap_or_else(|| format!("sqlite://{}", dir.join("views.db").display())),
        &SqliteArgs::default(),
    )
    .await?;
    let side = ReadSide::start(
        &opened,
        true,
        store,
        &UpdaterArgs {
            batch_size: 1000,
            poll_ms: 20,
        },
    );
    Ok((opened, side))
}
