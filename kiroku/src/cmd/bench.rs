//! `kiroku bench`: reproducible measurements. Numbers come from here, never from tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use kiroku_chat::{Room, RoomCommand};
use kiroku_core::Caller;
use kiroku_journal::{
    AppendRequest, EventMetadata, Journal, NewEvent, SqliteJournal, SqliteJournalOptions, StreamId,
};
use kiroku_proto::v1::{
    self as pb, CommandMeta as PbMeta, ExecuteRequest, execute_request::Command as Pb,
};
use kiroku_write_api::grpc::{Auth, WriteApi, WriteApiConfig};
use kiroku_write_api::runtime::{AggregateRuntime, CommandMeta, RuntimeConfig};

use super::client::ClientArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Durable commands/s and latency through gRPC (against --server, or an in-process `dev`).
    Commands(CommandsArgs),
    /// Journal appends/s with and without group commit.
    Journal(JournalArgs),
    /// Memory of resident aggregates (RSS growth per 100k).
    Memory(MemoryArgs),
    /// DynamoDB requests per command for resident aggregates, and cold activation cost.
    Dynamodb(DynamoArgs),
    /// Rebuild (replay) rate of the rooms projection into SQLite (and PostgreSQL).
    Rebuild(super::bench_read::RebuildBenchArgs),
    /// Projection lag from command acknowledgement to the views, under a sustained load.
    Lag(super::bench_read::LagArgs),
    /// From command acknowledgement to the message pushed to live gRPC subscribers.
    Push(super::bench_push::PushArgs),
    /// A paced load on a `kiroku dev` process for minutes: disk (WAL) use, throughput and p99 over
    /// time, and what a clean shutdown leaves behind.
    Soak(super::bench_soak::SoakArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    super::serve::init_tracing();
    match args.what {
        Bench::Commands(a) => commands(a).await,
        Bench::Journal(a) => journal(a).await,
        Bench::Memory(a) => memory(a).await,
        Bench::Dynamodb(a) => dynamodb(a).await,
        Bench::Rebuild(a) => super::bench_read::rebuild_rate(a).await,
        Bench::Lag(a) => super::bench_read::lag(a).await,
        Bench::Push(a) => super::bench_push::push(a).await,
        Bench::Soak(a) => super::bench_soak::soak(a).await,
    }
}

#[derive(Args, Debug)]
struct CommandsArgs {
    /// Rooms the load is spread over.
    #[arg(long, default_value_t = 1000)]
    aggregates: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// HTTP/2 connections the requests share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Offered load in commands/s (paced, latency measured from the scheduled send time). Without
    /// it, every worker sends as fast as answers come (closed loop: maximum throughput).
    #[arg(long)]
    rate: Option<u64>,
    /// Benchmark the write API at this URL instead of an in-process one.
    #[arg(long)]
    target: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

fn meta(command_id: String) -> Option<PbMeta> {
    Some(PbMeta {
        command_id,
        ..Default::default()
    })
}

async fn commands(a: CommandsArgs) -> anyhow::Result<()> {
    let _dir;
    let mut _server = None;
    let target = match &a.target {
        Some(s) => s.clone(),
        None => {
            let dir = tempfile::tempdir()?;
            let journal = SqliteJournal::open(
                dir.path().join("journal.db"),
                SqliteJournalOptions::default(),
            )?;
            let rooms = AggregateRuntime::<Room>::new(Arc::new(journal), RuntimeConfig::default());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let api = WriteApi {
                rooms,
                auth: Auth::Open,
                config: WriteApiConfig::default(),
                projections: None,
                extra_routes: None,
            };
            _server = Some(tokio::spawn(api.serve(listener, std::future::pending())));
            _dir = dir;
            format!("http://{addr}")
        }
    };
    let load = PostLoad::connect(&target, a.connections, a.aggregates, &a.client).await?;
    let mode = match a.rate {
        Some(r) => format!("paced at {r} commands/s"),
        None => "closed loop (as fast as possible)".into(),
    };
    eprintln!(
        "posting for {}s with {} in flight over {} connections, {mode} ...",
        a.seconds, a.concurrency, a.connections
    );
    let start = Instant::now();
    let latencies = Arc::new(Latencies::default());
    load.run(
        a.concurrency,
        a.rate,
        start + Duration::from_secs(a.seconds),
        latencies.clone(),
    )
    .await?;
    let elapsed = start.elapsed().as_secs_f64();
    let hist = latencies.total.lock();
    println!(
        "bench commands: {} rooms, {} in flight, {} connections, {mode}",
        load.rooms.len(),
        a.concurrency.max(1),
        load.clients.len()
    );
    println!(
        "  durable commands: {} in {elapsed:.1}s = {:.0} commands/s",
        hist.len(),
        hist.len() as f64 / elapsed
    );
    print_latency(&hist);
    let errors = latencies.errors.lock();
    if !errors.is_empty() {
        println!("  errors: {errors:?}");
    }
    Ok(())
}

type PostClient = kiroku_proto::v1::command_service_client::CommandServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        super::client::Credentials,
    >,
>;

/// Room posts over gRPC: the load of `bench commands` and `bench soak`.
pub(super) struct PostLoad {
    clients: Vec<PostClient>,
    rooms: Arc<Vec<String>>,
    run_id: String,
}

/// Latencies (µs, from the scheduled send) of a run, and of the current window of it.
#[derive(Default)]
pub(super) struct Latencies {
    pub total: parking_lot::Mutex<HdrHistogram>,
    pub window: parking_lot::Mutex<HdrHistogram>,
    pub errors: parking_lot::Mutex<BTreeMap<String, u64>>,
}

/// A histogram with 3 significant digits.
pub(super) struct HdrHistogram(Histogram<u64>);

impl Default for HdrHistogram {
    fn default() -> Self {
        Self(Histogram::new(3).expect("valid histogram"))
    }
}

impl std::ops::Deref for HdrHistogram {
    type Target = Histogram<u64>;
    fn deref(&self) -> &Histogram<u64> {
        &self.0
    }
}

impl std::ops::DerefMut for HdrHistogram {
    fn deref_mut(&mut self) -> &mut Histogram<u64> {
        &mut self.0
    }
}

impl Latencies {
    fn record(&self, micros: u64) {
        // `record` grows the histogram as needed (`saturating_record` would clamp to its range).
        self.total.lock().record(micros).expect("in range");
        self.window.lock().record(micros).expect("in range");
    }

    /// The window so far, and a fresh one started.
    pub fn take_window(&self) -> HdrHistogram {
        std::mem::take(&mut *self.window.lock())
    }
}

impl PostLoad {
    /// Connects `connections` HTTP/2 connections to `target` and creates `rooms` rooms.
    pub async fn connect(
        target: &str,
        connections: usize,
        rooms: usize,
        client_args: &ClientArgs,
    ) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..connections.max(1) {
            let channel = tonic::transport::Channel::from_shared(target.to_owned())?
                .connect()
                .await?;
            clients.push(
                kiroku_proto::v1::command_service_client::CommandServiceClient::with_interceptor(
                    channel,
                    client_args.credentials()?,
                ),
            );
        }
        let run_id = uuid::Uuid::now_v7().to_string();
        let rooms: Vec<String> = (0..rooms).map(|i| format!("bench-{run_id}-{i}")).collect();
        eprintln!("creating {} rooms on {target} ...", rooms.len());
        futures::future::try_join_all(rooms.chunks(256).enumerate().map(|(n, chunk)| {
            let mut c = clients[n % clients.len()].clone();
            async move {
                for room in chunk {
                    let create = Pb::CreateRoom(pb::CreateRoom { name: room.clone() });
                    c.execute(ExecuteRequest {
                        meta: None,
                        room_id: room.clone(),
                        command: Some(create),
                    })
                    .await?;
                }
                Ok::<_, tonic::Status>(())
            }
        }))
        .await?;
        Ok(Self {
            clients,
            rooms: Arc::new(rooms),
            run_id,
        })
    }

    /// Posts until `end` from `workers` tasks: paced at `rate` commands/s (latency from the
    /// scheduled send time), or closed loop without a rate.
    pub async fn run(
        &self,
        workers: usize,
        rate: Option<u64>,
        end: Instant,
        latencies: Arc<Latencies>,
    ) -> anyhow::Result<()> {
        let workers = workers.max(1);
        let interval = rate.map(|r| Duration::from_secs_f64(workers as f64 / r.max(1) as f64));
        let mut tasks = Vec::new();
        for w in 0..workers {
            let mut c = self.clients[w % self.clients.len()].clone();
            let (rooms, latencies) = (self.rooms.clone(), latencies.clone());
            let run_id = self.run_id.clone();
            tasks.push(tokio::spawn(async move {
                let mut next = Instant::now()
                    + interval.map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / workers as f64));
                let mut n = 0usize;
                while next < end {
                    if interval.is_some() {
                        tokio::time::sleep_until(next.into()).await;
                    }
                    let scheduled = if interval.is_some() {
                        next
                    } else {
                        Instant::now()
                    };
                    let room = &rooms[(w + n * workers) % rooms.len()];
                    let post = Pb::PostMessage(pb::PostMessage {
                        message_id: String::new(),
                        body: format!("message {n} from worker {w}"),
                    });
                    let request = ExecuteRequest {
                        meta: meta(format!("{run_id}-{w}-{n}")),
                        room_id: room.clone(),
                        command: Some(post),
                    };
                    match c.execute(request).await {
                        Ok(_) => latencies.record(scheduled.elapsed().as_micros() as u64),
                        Err(s) => {
                            *latencies
                                .errors
                                .lock()
                                .entry(format!("{:?}", s.code()))
                                .or_default() += 1
                        }
                    }
                    n += 1;
                    next = match interval {
                        Some(i) => next + i,
                        None => Instant::now(),
                    };
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        Ok(())
    }
}

pub(super) fn print_latency(hist: &Histogram<u64>) {
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0
    );
}

#[derive(Args, Debug)]
struct JournalArgs {
    /// Concurrent appenders, each on its own stream.
    #[arg(long, default_value_t = 256)]
    writers: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

async fn journal(a: JournalArgs) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for group_commit in [true, false] {
        let dir = tempfile::tempdir()?;
        let options = SqliteJournalOptions {
            group_commit,
            ..Default::default()
        };
        let journal = Arc::new(SqliteJournal::open(dir.path().join("journal.db"), options)?);
        let end = Instant::now() + Duration::from_secs(a.seconds);
        let start = Instant::now();
        let tasks: Vec<_> = (0..a.writers)
            .map(|w| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let stream = StreamId::new("bench", format!("w{w}"));
                    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
                    let mut seq = 0;
                    while Instant::now() < end {
                        let t = Instant::now();
                        let request = AppendRequest {
                            stream: stream.clone(),
                            expected_sequence: seq,
                            events: vec![NewEvent {
                                event_type: "bench.Event".into(),
                                schema_version: 1,
                                payload: vec![7; 100],
                            }],
                            metadata: EventMetadata {
                                command_id: format!("{w}-{seq}"),
                                principal: "bench".into(),
                                ..Default::default()
                            },
                        };
                        journal.append(request).await.expect("append");
                        hist.record(t.elapsed().as_micros() as u64)
                            .expect("in range");
                        seq += 1;
                    }
                    hist
                })
            })
            .collect();
        let mut hist = Histogram::<u64>::new(3)?;
        for t in tasks {
            hist.add(t.await?)?;
        }
        let rate = hist.len() as f64 / start.elapsed().as_secs_f64();
        println!(
            "bench journal: group commit {}: {rate:.0} durable appends/s ({} writers, 1 event of 100 bytes each)",
            if group_commit { "ON " } else { "OFF" },
            a.writers
        );
        print_latency(&hist);
        rates.push(rate);
    }
    println!("  group commit speed-up: {:.1}x", rates[0] / rates[1]);
    Ok(())
}

#[derive(Args, Debug)]
struct MemoryArgs {
    #[arg(long, default_value_t = 100_000)]
    aggregates: usize,
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Creates the aggregates with a small resident cap (so the journal holds them and its caches are
/// warm), then activates them all and measures how much RSS that adds: the cost of residency alone.
async fn memory(a: MemoryArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let journal: Arc<dyn Journal> = Arc::new(SqliteJournal::open(
        dir.path().join("journal.db"),
        SqliteJournalOptions::default(),
    )?);
    let meta = |i: usize| CommandMeta {
        command_id: format!("create-{i}"),
        caller: Caller::new("bench"),
        expected_version: None,
        correlation_id: String::new(),
        causation_id: String::new(),
    };
    let ids: Vec<String> = (0..a.aggregates).map(|i| format!("room-{i}")).collect();
    let lanes = 500;
    let start = Instant::now();
    {
        let config = RuntimeConfig {
            max_resident: 1000,
            ..Default::default()
        };
        let rooms = AggregateRuntime::<Room>::new(journal.clone(), config);
        futures::future::try_join_all((0..lanes).map(|lane| {
            let (rooms, ids) = (rooms.clone(), &ids);
            async move {
                for i in (lane..ids.len()).step_by(lanes) {
                    let create = RoomCommand::Create {
                        name: format!("room {i}"),
                    };
                    rooms.execute(&ids[i], create, meta(i)).await?;
                }
                Ok::<_, kiroku_write_api::runtime::CommandError>(())
            }
        }))
        .await?;
        rooms.shutdown(Duration::from_secs(30)).await;
    }
    println!(
        "bench memory: {} rooms created in {:.1}s",
        a.aggregates,
        start.elapsed().as_secs_f64()
    );
    let config = RuntimeConfig {
        max_resident: a.aggregates * 2,
        ..Default::default()
    };
    let rooms = AggregateRuntime::<Room>::new(journal, config);
    let before = rss_bytes();
    let start = Instant::now();
    futures::future::try_join_all((0..lanes).map(|lane| {
        let (rooms, ids) = (rooms.clone(), &ids);
        async move {
            for i in (lane..ids.len()).step_by(lanes) {
                rooms.inspect(&ids[i]).await?;
            }
            Ok::<_, kiroku_write_api::runtime::CommandError>(())
        }
    }))
    .await?;
    let after = rss_bytes();
    let resident = rooms.resident();
    let seconds = start.elapsed().as_secs_f64();
    let per_100k = after.saturating_sub(before) as f64 * 100_000.0 / resident.max(1) as f64;
    println!(
        "  activated {resident} from the journal in {seconds:.1}s ({:.0} activations/s)",
        resident as f64 / seconds
    );
    println!(
        "  RSS {:.1} MiB -> {:.1} MiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!(
        "  = {:.1} MiB per 100k resident aggregates ({:.0} bytes each: actor, mailbox, registry entry, room state)",
        per_100k / 1048576.0,
        per_100k / 100_000.0
    );
    rooms.shutdown(Duration::from_secs(30)).await;
    Ok(())
}

#[derive(Args, Debug)]
struct DynamoArgs {
    /// dynamodb://?endpoint=…&region=…&prefix=… (tables are created, and deleted afterwards
    /// unless --keep-tables).
    #[arg(long, env = "KIROKU_JOURNAL")]
    journal: String,
    #[arg(long, default_value_t = 20)]
    aggregates: usize,
    /// Commands per aggregate while resident.
    #[arg(long, default_value_t = 20)]
    commands: usize,
    /// Snapshot every N events (cold activation reads the snapshot plus the events after it).
    #[arg(long, default_value_t = 10)]
    snapshot_every: u64,
    #[arg(long)]
    keep_tables: bool,
}

/// Commands through the aggregate runtime on the DynamoDB journal, counting the requests.
async fn dynamodb(a: DynamoArgs) -> anyhow::Result<()> {
    use kiroku_journal_dynamodb::DynamoDbJournal;
    let journal = DynamoDbJournal::from_url(&a.journal).await?;
    journal.init_tables().await?;
    let result = async {
        let port: Arc<dyn Journal> = Arc::new(journal.clone());
        let config = RuntimeConfig { snapshot_every: a.snapshot_every, ..Default::default() };
        let meta = |id: String| CommandMeta {
            command_id: id,
            caller: Caller::new("bench"),
            expected_version: None,
            correlation_id: String::new(),
            causation_id: String::new(),
        };
        let run = uuid::Uuid::now_v7().simple().to_string();
        let ids: Vec<String> = (0..a.aggregates).map(|i| format!("{run}-{i}")).collect();
        let rooms = AggregateRuntime::<Room>::new(port.clone(), config.clone());
        for id in &ids {
            rooms.execute(id, RoomCommand::Create { name: id.clone() }, meta(format!("{id}-create"))).await?;
        }
        // Resident aggregates: every command is decided from memory.
        let before = journal.request_counts();
        let mut hist = Histogram::<u64>::new(3)?;
        let start = Instant::now();
        futures::future::try_join_all(ids.iter().map(|id| {
            let rooms = rooms.clone();
            async move {
                let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
                for n in 0..a.commands {
                    let t = Instant::now();
                    let post = RoomCommand::PostMessage { message_id: format!("m{n}"), body: format!("message {n}") };
                    rooms.execute(id, post, meta(format!("{id}-{n}"))).await?;
                    hist.record(t.elapsed().as_micros() as u64).expect("in range");
                }
                Ok::<_, kiroku_write_api::runtime::CommandError>(hist)
            }
        }))
        .await?
        .into_iter()
        .try_for_each(|h| hist.add(h))?;
        let seconds = start.elapsed().as_secs_f64();
        let used = journal.request_counts().since(&before);
        let commands = (a.aggregates * a.commands) as f64;
        let snapshots = used.by_operation.get("PutItem").copied().unwrap_or(0);
        println!("bench dynamodb: {} resident aggregates x {} commands on {}", a.aggregates, a.commands, a.journal);
        println!("  {:.0} commands/s", commands / seconds);
        print_latency(&hist);
        println!(
            "  requests per command: {:.2} ({} reads; by operation {:?}; PutItem are snapshots every {} events)",
            used.total as f64 / commands,
            used.reads(),
            used.by_operation,
            a.snapshot_every
        );
        println!(
            "  excluding snapshot writes: {:.2} requests per command",
            (used.total - snapshots) as f64 / commands
        );
        rooms.shutdown(Duration::from_secs(30)).await;

        // Cold activation: nothing resident; load from the newest snapshot plus the tail.
        let cold = AggregateRuntime::<Room>::new(port, config);
        let before = journal.request_counts();
        let mut hist = Histogram::<u64>::new(3)?;
        for id in &ids {
            let t = Instant::now();
            cold.inspect(id).await?;
            hist.record(t.elapsed().as_micros() as u64)?;
        }
        let used = journal.request_counts().since(&before);
        println!(
            "  cold activation: {:.2} requests each ({:?}), tail after the snapshot: {} events",
            used.total as f64 / ids.len() as f64,
            used.by_operation,
            (1 + a.commands as u64) % a.snapshot_every.max(1)
        );
        print_latency(&hist);
        cold.shutdown(Duration::from_secs(30)).await;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if !a.keep_tables {
        journal.delete_tables().await?;
    }
    result
}
