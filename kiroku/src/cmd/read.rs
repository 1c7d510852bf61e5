//! The read side in the `kiroku` binary: the updater (in `dev` or alone), rebuilds and dead
//! letters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kiroku_journal::StreamId;
use kiroku_read_api::{Caps, Head, ReadApi, ReadLimits, ReadQueries};
use kiroku_read_model_updater::{
    Changed, Consistency, ConsistencyWaiter, JournalFeed, PROJECTIONS, Progress, ROOMS, ReadStore,
    RoomsProjection, Updater, UpdaterConfig, UpdaterHealth, dead_letters,
    open_store_with_wal_ceiling, rebuild,
};
use kiroku_write_api::grpc::{AuthConfigError, ProjectionWait};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use super::serve::{AuthArgs, init_tracing, shutdown_signal};
use crate::journal_url::{JournalUrl, Opened, SqliteArgs};

#[derive(Args, Debug, Clone)]
pub struct UpdaterArgs {
    /// Events per read-store transaction.
    #[arg(long, env = "KIROKU_UPDATER_BATCH", default_value_t = 1000)]
    pub batch_size: usize,
    /// How often to look for new events when the journal is written by another process.
    #[arg(long, env = "KIROKU_UPDATER_POLL_MS", default_value_t = 20)]
    pub poll_ms: u64,
}

/// Caps on the read API's long-lived requests, per principal and in total; beyond them
/// RESOURCE_EXHAUSTED (HTTP 429).
#[derive(Args, Debug, Clone)]
pub struct ReadLimitArgs {
    /// Queries waiting for a consistency token at once, all callers together.
    #[arg(long, env = "KIROKU_READ_MAX_WAITS", default_value_t = kiroku_read_api::DEFAULT_MAX_WAITS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waits: u32,
    /// Queries waiting for a consistency token at once, per principal.
    #[arg(long, env = "KIROKU_READ_MAX_WAITS_PER_PRINCIPAL", default_value_t = kiroku_read_api::DEFAULT_MAX_WAITS_PER_PRINCIPAL as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waits_per_principal: u32,
    /// Live streams (gRPC WatchRoom and SSE) open at once, all callers together.
    #[arg(long, env = "KIROKU_READ_MAX_STREAMS", default_value_t = kiroku_read_api::DEFAULT_MAX_STREAMS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// Live streams open at once, per principal.
    #[arg(long, env = "KIROKU_READ_MAX_STREAMS_PER_PRINCIPAL", default_value_t = kiroku_read_api::DEFAULT_MAX_STREAMS_PER_PRINCIPAL as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_principal: u32,
}

impl ReadLimitArgs {
    pub fn limits(&self) -> ReadLimits {
        ReadLimits {
            waits: Caps {
                total: self.max_waits as usize,
                per_principal: self.max_waits_per_principal as usize,
            },
            streams: Caps {
                total: self.max_streams as usize,
                per_principal: self.max_streams_per_principal as usize,
            },
        }
    }
}

/// A running updater and what the rest of the process needs from it.
pub struct ReadSide {
    pub store: Arc<dyn ReadStore>,
    pub progress: watch::Receiver<Progress>,
    /// Whether the updater can commit, its faults and restarts (readiness, status, metrics).
    pub health: watch::Receiver<UpdaterHealth>,
    pub changes: broadcast::Sender<Changed>,
    pub waiter: ConsistencyWaiter,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ReadSide {
    /// Starts the rooms projection over `journal` into `store`. Woken by the journal's writer
    /// when this process writes the journal (`writes_here`), polling otherwise: another
    /// process's commits never reach this process's commit watch.
    pub fn start(
        journal: &Opened,
        writes_here: bool,
        store: Arc<dyn ReadStore>,
        args: &UpdaterArgs,
    ) -> Self {
        let port = journal.port();
        let committed = if writes_here {
            journal.committed()
        } else {
            None
        };
        let feed = JournalFeed::new(port.clone(), committed)
            .with_poll_interval(Duration::from_millis(args.poll_ms.max(1)));
        let config = UpdaterConfig {
            batch_size: args.batch_size.max(1),
            ..UpdaterConfig::default()
        };
        let mut updater = Updater::new(
            store.clone(),
            port,
            Arc::new(feed),
            Arc::new(RoomsProjection),
            config,
        );
        let progress = updater.progress();
        let health = updater.health();
        let changes = updater.changes();
        let waiter = ConsistencyWaiter::new(store.clone(), ROOMS, Some(progress.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        // The updater never stops on its own: it retries transient faults and restarts itself
        // after any other failure, logging each and publishing it in `health`.
        let task = tokio::spawn(async move {
            updater
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            store,
            progress,
            health,
            changes,
            waiter,
            stop,
            task,
        }
    }

    /// Finishes the batch in hand and stops.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("the read-model updater panicked")
    }

    pub fn projection_wait(&self) -> Arc<dyn ProjectionWait> {
        Arc::new(Projected(self.waiter.clone()))
    }
}

struct Projected(ConsistencyWaiter);

#[async_trait::async_trait]
impl ProjectionWait for Projected {
    async fn wait_projected(
        &self,
        aggregate_id: &str,
        version: u64,
        timeout: Duration,
    ) -> Result<bool, String> {
        let stream = StreamId::new("room", aggregate_id);
        match self.0.wait_for(&stream, version, timeout).await {
            Ok(Consistency::Reached { .. }) => Ok(true),
            Ok(Consistency::NotYet { .. }) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Opens a read store; a SQLite one keeps its WAL under the ceiling of `sqlite`.
pub async fn open_read_store(url: &str, sqlite: &SqliteArgs) -> anyhow::Result<Arc<dyn ReadStore>> {
    open_store_with_wal_ceiling(url, sqlite.wal_ceiling())
        .await
        .with_context(|| format!("opening the read store {url}"))
}

/// Opens a journal for reading its global order (the read side never creates tables).
async fn open_feed_journal(url: &str) -> anyhow::Result<Opened> {
    let journal = JournalUrl::parse(url)?;
    let opened = journal.open(false, &SqliteArgs::default()).await?;
    if !opened.port().has_global_order() {
        bail!(
            "the journal {journal} has no global order to tail; the read side follows a DynamoDB \
             journal through its stream relay (not in this build)"
        );
    }
    Ok(opened)
}

#[derive(Args, Debug)]
pub struct StandaloneUpdaterArgs {
    /// The journal to follow: sqlite:///path/journal.db.
    #[arg(long, env = "KIROKU_JOURNAL")]
    journal: String,
    /// The read store: sqlite:///path/views.db or postgres://user@host/db.
    #[arg(long, env = "KIROKU_READ_STORE")]
    read_store: String,
    #[command(flatten)]
    updater: UpdaterArgs,
    #[command(flatten)]
    sqlite: SqliteArgs,
}

/// `kiroku read-model-updater`: the updater alone.
pub async fn read_model_updater(args: StandaloneUpdaterArgs) -> anyhow::Result<()> {
    init_tracing();
    let journal = open_feed_journal(&args.journal).await?;
    let store = open_read_store(&args.read_store, &args.sqlite).await?;
    let side = ReadSide::start(&journal, false, store, &args.updater);
    println!(
        "kiroku read-model-updater: projecting {} into {}",
        args.journal, args.read_store
    );
    shutdown_signal().await;
    side.stop().await?;
    println!("kiroku read-model-updater: stopped");
    Ok(())
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// The projection to rebuild (`rooms`).
    projection: String,
    #[arg(
        long,
        env = "KIROKU_JOURNAL",
        default_value = "sqlite://.kiroku/journal.db"
    )]
    journal: String,
    #[arg(
        long,
        env = "KIROKU_READ_STORE",
        default_value = "sqlite://.kiroku/views.db"
    )]
    read_store: String,
    /// Events per transaction.
    #[arg(long, default_value_t = 5000)]
    batch_size: usize,
}

/// `kiroku rebuild PROJECTION`: replays the journal into a new version of the projection and
/// switches to it. Resumes an interrupted rebuild.
pub async fn rebuild_projection(args: RebuildArgs) -> anyhow::Result<()> {
    if !PROJECTIONS.contains(&args.projection.as_str()) {
        bail!(
            "not found: there is no projection {:?}; known: {}",
            args.projection,
            PROJECTIONS.join(", ")
        );
    }
    let journal = open_feed_journal(&args.journal).await?;
    let store = open_read_store(&args.read_store, &SqliteArgs::default()).await?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}")?
            .progress_chars("=> "),
    );
    bar.set_message(format!("rebuilding {}", args.projection));
    let done = rebuild::rebuild(
        store,
        journal.port(),
        Arc::new(RoomsProjection),
        args.batch_size.max(1),
        |p| {
            bar.set_length(p.head);
            bar.set_position(p.position);
        },
    )
    .await?;
    bar.finish();
    println!(
        "rebuilt {} as version {}: {} events in {:.1} s ({:.0} events/s); version {} is now active",
        args.projection,
        done.version,
        done.events,
        done.elapsed.as_secs_f64(),
        done.events_per_second(),
        done.version
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct DeadLetterArgs {
    #[command(subcommand)]
    command: DeadLetterCommand,
    #[arg(
        long,
        env = "KIROKU_READ_STORE",
        default_value = "sqlite://.kiroku/views.db",
        global = true
    )]
    read_store: String,
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// List parked events, oldest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Project a room's parked events again (after a fix) and apply those that now succeed.
    Retry { room_id: String },
    /// Give up on a room's oldest parked event, then retry the ones behind it.
    Skip { room_id: String, sequence: u64 },
}

/// `kiroku dead-letters …`.
pub async fn dead_letters(args: DeadLetterArgs) -> anyhow::Result<()> {
    let store = open_read_store(&args.read_store, &SqliteArgs::default()).await?;
    let projection = RoomsProjection;
    match args.command {
        DeadLetterCommand::List { limit } => {
            let parked = store.dead_letters(ROOMS, limit).await?;
            if parked.is_empty() {
                println!("no parked events");
            }
            for d in parked {
                println!(
                    "{} #{} (position {}) {} v{}: {} [attempts {}]",
                    d.envelope.stream,
                    d.envelope.sequence,
                    d.envelope.global_position,
                    d.envelope.event_type,
                    d.envelope.schema_version,
                    d.error,
                    d.attempts
                );
            }
        }
        DeadLetterCommand::Retry { room_id } => {
            let r =
                dead_letters::retry(store.as_ref(), &projection, &StreamId::new("room", room_id))
                    .await?;
            report(&r);
        }
        DeadLetterCommand::Skip { room_id, sequence } => {
            let stream = StreamId::new("room", room_id);
            let r = dead_letters::skip(store.as_ref(), &projection, &stream, sequence).await?;
            report(&r);
        }
    }
    Ok(())
}

fn report(r: &dead_letters::Resolution) {
    println!("applied {}, still parked {}", r.applied, r.still_parked);
    if let Some(e) = &r.error {
        println!("still failing: {e}");
    }
}

#[derive(Args, Debug)]
pub struct ReadApiArgs {
    /// The read store: sqlite:///path/views.db or postgres://user@host/db.
    #[arg(long, env = "KIROKU_READ_STORE")]
    read_store: String,
    /// The journal the views follow (sqlite:///path/journal.db), to report lag in events.
    /// Optional: without it, status shows the position but not how far behind it is.
    #[arg(long, env = "KIROKU_JOURNAL")]
    journal: Option<String>,
    /// gRPC address (kiroku.v1.ReadService, health, reflection).
    #[arg(long, env = "KIROKU_LISTEN", default_value = "0.0.0.0:50052")]
    listen: SocketAddr,
    /// HTTP/JSON address (queries, Server-Sent Events, /metrics, /healthz).
    #[arg(long, env = "KIROKU_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    http_listen: SocketAddr,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    limits: ReadLimitArgs,
}

/// `kiroku read-api`: the read API alone, over a read store another process fills.
pub async fn read_api(args: ReadApiArgs) -> anyhow::Result<()> {
    init_tracing();
    let auth = args.auth.auth()?.ok_or(AuthConfigError::Missing)?;
    let store = open_read_store(&args.read_store, &SqliteArgs::default()).await?;
    let head = match &args.journal {
        Some(url) => Head::Journal(open_feed_journal(url).await?.port()),
        None => Head::Unknown,
    };
    let api = ReadApi::new(ReadQueries::new(store, head), auth).with_limits(args.limits.limits());
    let http = TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding {}", args.http_listen))?;
    let grpc = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("kiroku read-api: read model {}", args.read_store);
    println!("kiroku read-api: http listening on {}", http.local_addr()?);
    println!("kiroku read-api: grpc listening on {}", grpc.local_addr()?);
    api.serve(grpc, http, shutdown_signal()).await?;
    println!("kiroku read-api: stopped");
    Ok(())
}
