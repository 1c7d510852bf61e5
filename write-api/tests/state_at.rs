//! Time travel by timestamp (`GetStateAt`) over a real SQLite journal: the answer equals a
//! replay from the first event, and only the events after the newest snapshot taken at or before
//! the moment are read. A wrapper journal counts the reads.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiroku_chat::{Room, RoomCommand};
use kiroku_core::{Aggregate, Caller};
use kiroku_journal::*;
use kiroku_proto::v1::history_service_client::HistoryServiceClient;
use kiroku_proto::v1::{StateAtRequest, state_at_request::At};
use kiroku_write_api::grpc::{Auth, WriteApi, WriteApiConfig};
use kiroku_write_api::runtime::{AggregateRuntime, CommandMeta, RuntimeConfig};
use parking_lot::Mutex;
use tonic::Code;

/// A real SQLite journal that records which events the service reads.
struct Counting {
    inner: SqliteJournal,
    /// `(from, events returned)` of every `read_stream`.
    reads: Mutex<Vec<(u64, usize)>>,
    snapshot_lookups: Mutex<u64>,
}

#[async_trait]
impl Journal for Counting {
    async fn append(&self, r: AppendRequest) -> Result<AppendOutcome, JournalError> {
        self.inner.append(r).await
    }
    async fn record_rejection(
        &self,
        r: CommandRecord,
        at: u64,
    ) -> Result<CommandRecord, JournalError> {
        self.inner.record_rejection(r, at).await
    }
    async fn command_record(
        &self,
        p: &str,
        c: &str,
    ) -> Result<Option<CommandRecord>, JournalError> {
        self.inner.command_record(p, c).await
    }
    async fn read_stream(
        &self,
        s: &StreamId,
        f: u64,
        t: u64,
        l: usize,
    ) -> Result<Vec<Envelope>, JournalError> {
        let page = self.inner.read_stream(s, f, t, l).await?;
        self.reads.lock().push((f, page.len()));
        Ok(page)
    }
    async fn highest_sequence(&self, s: &StreamId) -> Result<u64, JournalError> {
        self.inner.highest_sequence(s).await
    }
    fn has_global_order(&self) -> bool {
        true
    }
    async fn read_all(&self, a: u64, l: usize) -> Result<Vec<Envelope>, JournalError> {
        self.inner.read_all(a, l).await
    }
    async fn delete_up_to(&self, s: &StreamId, t: u64) -> Result<(), JournalError> {
        self.inner.delete_up_to(s, t).await
    }
    async fn save_snapshot(&self, s: SnapshotRecord) -> Result<(), JournalError> {
        self.inner.save_snapshot(s).await
    }
    async fn latest_snapshot(
        &self,
        s: &StreamId,
        m: u64,
    ) -> Result<Option<SnapshotRecord>, JournalError> {
        *self.snapshot_lookups.lock() += 1;
        self.inner.latest_snapshot(s, m).await
    }
}

/// Ann, in dev mode's principal header.
fn ann(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut()
        .insert("x-kiroku-principal", "ann".parse().unwrap());
    Ok(r)
}

type Ann = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
type History = HistoryServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Ann>,
>;

struct Served {
    journal: Arc<Counting>,
    history: History,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

const EVENTS: u64 = 35;

/// Room `r` with 35 events (created, then posts), a snapshot every 10 events, `keep` snapshots
/// kept, each event stamped at its own millisecond; served over gRPC.
async fn room_with_snapshots(keep: usize) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteJournalOptions {
        snapshots_to_keep: keep,
        ..SqliteJournalOptions::default()
    };
    let inner = SqliteJournal::open(dir.path().join("journal.db"), options).unwrap();
    let journal = Arc::new(Counting {
        inner,
        reads: Mutex::default(),
        snapshot_lookups: Mutex::default(),
    });
    let config = RuntimeConfig {
        snapshot_every: 10,
        ..RuntimeConfig::default()
    };
    let rooms = AggregateRuntime::<Room>::new(journal.clone(), config);
    for n in 1..=EVENTS {
        let command = if n == 1 {
            RoomCommand::Create { name: "r".into() }
        } else {
            RoomCommand::PostMessage {
                message_id: format!("m{n}"),
                body: format!("message {n}"),
            }
        };
        let meta = CommandMeta {
            command_id: format!("c{n}"),
            caller: Caller::new("ann"),
            expected_version: None,
            correlation_id: format!("c{n}"),
            causation_id: format!("c{n}"),
        };
        rooms.execute("r", command, meta).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let api = WriteApi {
        rooms,
        auth: Auth::Open,
        config: WriteApiConfig::default(),
        projections: None,
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
    Served {
        journal,
        history: HistoryServiceClient::with_interceptor(channel, ann as Ann),
        stop: Some(stop),
        _dir: dir,
    }
}

fn stream() -> StreamId {
    StreamId::new("room", "r")
}

impl Served {
    async fn events(&self) -> Vec<Envelope> {
        self.journal
            .inner
            .read_stream(&stream(), 1, u64::MAX, 1000)
            .await
            .unwrap()
    }

    /// The state at `at_ms` replayed from the first event: `(version, state as JSON)`.
    async fn replayed_from_zero(&self, at_ms: i64) -> (u64, serde_json::Value) {
        let (mut state, mut version) = (Room::default(), 0);
        for e in self.events().await {
            if e.metadata.timestamp_ms > at_ms {
                break;
            }
            state.apply(&Room::decode(&e.event_type, e.schema_version, &e.payload).unwrap());
            version = e.sequence;
        }
        (version, serde_json::to_value(&state).unwrap())
    }

    /// The newest snapshot stamped at or before `at_ms` (its sequence), as the journal keeps them.
    async fn newest_snapshot_by(&self, at_ms: i64) -> Option<u64> {
        let mut below = u64::MAX;
        while let Some(s) = self
            .journal
            .inner
            .latest_snapshot(&stream(), below)
            .await
            .unwrap()
        {
            if s.timestamp_ms <= at_ms {
                return Some(s.sequence);
            }
            below = s.sequence.checked_sub(1).filter(|b| *b > 0)?;
        }
        None
    }

    /// `GetStateAt` by timestamp, and the journal reads it made: `(from, events)` of each.
    async fn state_at(
        &mut self,
        at_ms: i64,
    ) -> (Result<(u64, serde_json::Value), Code>, Vec<(u64, usize)>) {
        self.journal.reads.lock().clear();
        let answer = self
            .history
            .get_state_at(StateAtRequest {
                aggregate_id: "r".into(),
                at: Some(At::TimestampMs(at_ms)),
                ..Default::default()
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.version, serde_json::from_str(&r.state_json).unwrap())
            })
            .map_err(|s| s.code());
        let reads = std::mem::take(&mut *self.journal.reads.lock());
        (answer, reads)
    }
}

#[tokio::test]
async fn time_travel_starts_from_the_newest_snapshot_at_or_before_the_moment_and_reads_only_the_tail()
 {
    let mut served = room_with_snapshots(3).await;
    let events = served.events().await;
    assert_eq!(events.len() as u64, EVENTS);
    let stamp = |sequence: usize| events[sequence - 1].metadata.timestamp_ms;
    for (moment, what) in [
        (stamp(25), "between two snapshots"),
        (stamp(5), "before the first snapshot"),
        (stamp(10), "at the first snapshot's event"),
        (stamp(35) + 60_000, "after the last event"),
    ] {
        let expected = served.replayed_from_zero(moment).await;
        let (answer, reads) = served.state_at(moment).await;
        assert_eq!(answer, Ok(expected.clone()), "{what}");
        let start = served.newest_snapshot_by(moment).await.unwrap_or(0);
        assert!(
            reads.iter().all(|(from, _)| *from == start + 1),
            "{what}: reads {reads:?}, newest snapshot by then: {start}"
        );
        let read: usize = reads.iter().map(|(_, n)| n).sum();
        assert!(
            read as u64 <= EVENTS - start,
            "{what}: {read} events read from {start}"
        );
    }
    // Between the snapshots at 20 and 30, only the events after 20 are read: the snapshot at 30
    // was taken after the moment and is passed over.
    let (_, reads) = served.state_at(stamp(25)).await;
    assert_eq!(served.newest_snapshot_by(stamp(25)).await, Some(20));
    assert_eq!(reads, vec![(21, 15)]);
    assert!(*served.journal.snapshot_lookups.lock() >= 2);
    // Before the first event there is nothing to show.
    let (answer, _) = served.state_at(stamp(1) - 1).await;
    assert_eq!(answer, Err(Code::NotFound));
}

#[tokio::test]
async fn time_travel_replays_from_the_first_event_when_every_kept_snapshot_is_newer() {
    // Only the latest snapshot (at 30) is kept.
    let mut served = room_with_snapshots(1).await;
    let events = served.events().await;
    let stamp = |sequence: usize| events[sequence - 1].metadata.timestamp_ms;
    let expected = served.replayed_from_zero(stamp(25)).await;
    assert_eq!(expected.0, 25);
    let (answer, reads) = served.state_at(stamp(25)).await;
    assert_eq!(answer, Ok(expected));
    assert_eq!(reads, vec![(1, EVENTS as usize)]);
    // After it, the snapshot is used.
    let expected = served.replayed_from_zero(stamp(33)).await;
    let (answer, reads) = served.state_at(stamp(33)).await;
    assert_eq!(answer, Ok(expected));
    assert_eq!(reads, vec![(31, 5)]);
}
