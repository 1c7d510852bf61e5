//! `kiroku dev` and `kiroku write-api`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kiroku_read_api::{Head, LiveStreams, ReadApi, ReadQueries};
use kiroku_write_api::grpc::{Auth, WriteApi, WriteApiConfig};
use kiroku_write_api::runtime::{AggregateRuntime, RuntimeConfig};
use tokio::net::TcpListener;

use super::read::{ReadLimitArgs, ReadSide, UpdaterArgs, open_read_store};
use crate::journal_url::{JournalUrl, SqliteArgs};

#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Snapshot an aggregate every N events (0: never).
    #[arg(long, env = "KIROKU_SNAPSHOT_EVERY", default_value_t = 100)]
    snapshot_every: u64,
    /// Passivate an aggregate after this many seconds without a command.
    #[arg(long, env = "KIROKU_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    idle_timeout_secs: u64,
    /// At most this many aggregates resident in memory.
    #[arg(long, env = "KIROKU_MAX_RESIDENT", default_value_t = 100_000)]
    max_resident: usize,
    /// Commands that may wait for one aggregate before RESOURCE_EXHAUSTED.
    #[arg(long, env = "KIROKU_MAILBOX_CAPACITY", default_value_t = 1_000)]
    mailbox_capacity: usize,
    /// Commands that may wait in the whole process before RESOURCE_EXHAUSTED.
    #[arg(long, env = "KIROKU_MAX_IN_FLIGHT", default_value_t = 100_000)]
    max_in_flight: usize,
}

impl RuntimeArgs {
    fn config(&self) -> RuntimeConfig {
        RuntimeConfig {
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_resident: self.max_resident,
            snapshot_every: self.snapshot_every,
            mailbox_capacity: self.mailbox_capacity,
            max_in_flight: self.max_in_flight,
            ..RuntimeConfig::default()
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// Bearer tokens: `token=principal[:role+role],...`.
    #[arg(long, env = "KIROKU_TOKENS", hide_env_values = true)]
    tokens: Option<String>,
    /// A file of `TOKEN PRINCIPAL [ROLE,ROLE]` lines.
    #[arg(long, env = "KIROKU_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
}

impl AuthArgs {
    /// The configured tokens, or `None` when there are none.
    pub fn auth(&self) -> anyhow::Result<Option<Auth>> {
        match (&self.tokens, &self.tokens_file) {
            (Some(_), Some(_)) => bail!("set KIROKU_TOKENS or KIROKU_TOKENS_FILE, not both"),
            (Some(spec), None) => Ok(Some(Auth::from_spec(spec)?)),
            (None, Some(path)) => Ok(Some(Auth::from_file(path)?)),
            (None, None) => Ok(None),
        }
    }
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the embedded journal lives.
    #[arg(long, env = "KIROKU_DATA_DIR", default_value = ".kiroku")]
    data_dir: PathBuf,
    /// Use this journal instead of the embedded one (e.g. dynamodb://?endpoint=…); its tables are
    /// created if missing.
    #[arg(long, env = "KIROKU_JOURNAL")]
    journal: Option<String>,
    /// gRPC address. Without tokens it must be a loopback address.
    #[arg(long, env = "KIROKU_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Use this read store instead of the embedded one (e.g. postgres://postgres@127.0.0.1/kiroku).
    #[arg(long, env = "KIROKU_READ_STORE")]
    read_store: Option<String>,
    /// The read API's HTTP/JSON address. Without tokens it must be a loopback address.
    #[arg(long, env = "KIROKU_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    updater: UpdaterArgs,
    #[command(flatten)]
    sqlite: SqliteArgs,
    #[command(flatten)]
    read_limits: ReadLimitArgs,
}

#[derive(Args, Debug)]
pub struct WriteApiArgs {
    /// The journal: sqlite:///path/to/journal.db (or a bare path), or
    /// dynamodb://?region=…&prefix=…[&endpoint=…] (tables from `kiroku journal init`).
    #[arg(
        long,
        env = "KIROKU_JOURNAL",
        default_value = "sqlite://.kiroku/journal.db"
    )]
    journal: String,
    #[arg(long, env = "KIROKU_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    sqlite: SqliteArgs,
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KIROKU_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The read model a `dev` process runs beside the write side.
struct DevReadSide {
    store: String,
    updater: UpdaterArgs,
    http: SocketAddr,
    limits: ReadLimitArgs,
}

/// What one serving process runs (`dev` or `write-api`).
struct Serve {
    what: &'static str,
    journal: JournalUrl,
    /// Create the journal's tables if missing (`dev`).
    create_tables: bool,
    sqlite: SqliteArgs,
    listen: SocketAddr,
    auth: Auth,
    runtime: RuntimeConfig,
    read: Option<DevReadSide>,
}

async fn serve(config: Serve) -> anyhow::Result<()> {
    let Serve {
        what,
        journal,
        create_tables,
        sqlite,
        listen,
        auth,
        runtime,
        read,
    } = config;
    let opened = journal.open(create_tables, &sqlite).await?;
    let journal_port = opened.port();
    let read_side = match read {
        Some(read) if journal_port.has_global_order() => {
            let store = open_read_store(&read.store, &sqlite).await?;
            println!("kiroku {what}: read model {}", read.store);
            let side = ReadSide::start(&opened, true, store, &read.updater);
            let api = ReadApi::new(
                ReadQueries::new(side.store.clone(), Head::Updater(side.progress.clone()))
                    .with_updater_health(side.health.clone()),
                auth.clone(),
            )
            .with_live(LiveStreams::default().following(side.changes.clone()))
            .with_limits(read.limits.limits());
            let http = TcpListener::bind(read.http)
                .await
                .with_context(|| format!("binding {}", read.http))?;
            println!(
                "kiroku {what}: http listening on {} (read API: /v1/rooms/ROOM, live: /v1/rooms/ROOM/live)",
                http.local_addr()?
            );
            Some((side, api, http))
        }
        Some(_) => {
            println!(
                "kiroku {what}: read model OFF: the journal {journal} has no global order to \
                 tail here (its stream relay is not in this build)"
            );
            None
        }
        None => None,
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let rooms = AggregateRuntime::new(journal_port, runtime);
    // The line scripts and tests wait for; keep its shape.
    println!("kiroku {what}: grpc listening on {addr}");
    println!("kiroku {what}: journal {journal}");
    if auth.is_open() {
        println!(
            "kiroku {what}: authentication is OFF (dev mode on loopback); the principal is `dev`, or the \
             x-kiroku-principal header. Set KIROKU_TOKENS to require tokens."
        );
    }
    // One signal stops everything: the write API stops accepting and drains, live streams end,
    // the HTTP server drains, then the updater finishes its batch.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (read_side, read_api) = match read_side {
        Some((side, api, http)) => {
            let mut stopped = stopped.clone();
            let server = api.clone().serve_http(http, async move {
                let _ = stopped.wait_for(|s| *s).await;
            });
            (Some((side, tokio::spawn(server))), Some(api))
        }
        None => (None, None),
    };
    let api = WriteApi {
        rooms,
        auth,
        config: WriteApiConfig::default(),
        projections: read_side.as_ref().map(|(side, _)| side.projection_wait()),
        extra_routes: read_api.as_ref().map(ReadApi::grpc_routes),
    };
    api.serve(listener, async move {
        shutdown_signal().await;
        if let Some(read_api) = read_api {
            read_api.close_streams();
        }
        let _ = stop.send(true);
    })
    .await?;
    if let Some((side, http)) = read_side {
        http.await.context("the HTTP server panicked")??;
        side.stop().await?;
    }
    opened.close().await;
    println!("kiroku {what}: stopped");
    Ok(())
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    init_tracing();
    let auth = match args.auth.auth()? {
        Some(auth) => auth,
        None if args.listen.ip().is_loopback() && args.http_listen.ip().is_loopback() => Auth::Open,
        None => bail!(
            "kiroku dev runs without authentication only on loopback addresses; {} is not one. \
             Set KIROKU_TOKENS or listen on 127.0.0.1",
            if args.listen.ip().is_loopback() {
                args.http_listen
            } else {
                args.listen
            }
        ),
    };
    let journal = match &args.journal {
        Some(url) => JournalUrl::parse(url)?,
        None => JournalUrl::Sqlite(args.data_dir.join("journal.db")),
    };
    let read = DevReadSide {
        store: args
            .read_store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", args.data_dir.join("views.db").display())),
        updater: args.updater.clone(),
        http: args.http_listen,
        limits: args.read_limits.clone(),
    };
    serve(Serve {
        what: "dev",
        journal,
        create_tables: true,
        sqlite: args.sqlite,
        listen: args.listen,
        auth,
        runtime: args.runtime.config(),
        read: Some(read),
    })
    .await
}

pub async fn write_api(args: WriteApiArgs) -> anyhow::Result<()> {
    init_tracing();
    let auth = args
        .auth
        .auth()?
        .ok_or(kiroku_write_api::grpc::AuthConfigError::Missing)?;
    let journal = JournalUrl::parse(&args.journal)?;
    serve(Serve {
        what: "write-api",
        journal,
        create_tables: false,
        sqlite: args.sqlite,
        listen: args.listen,
        auth,
        runtime: args.runtime.config(),
        read: None,
    })
    .await
}

#[derive(Args, Debug)]
pub struct JournalArgs {
    #[command(subcommand)]
    command: JournalCommand,
}

#[derive(clap::Subcommand, Debug)]
enum JournalCommand {
    /// Create the journal's tables (or SQLite file) if missing. Safe to run again.
    Init {
        #[arg(long, env = "KIROKU_JOURNAL")]
        journal: String,
    },
}

pub async fn journal(args: JournalArgs) -> anyhow::Result<()> {
    match args.command {
        JournalCommand::Init { journal } => {
            let url = JournalUrl::parse(&journal)?;
            url.open(true, &SqliteArgs::default()).await?;
            println!("journal {url} is ready");
            Ok(())
        }
    }
}
