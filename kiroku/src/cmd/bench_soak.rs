//! `kiroku bench soak`: a `kiroku dev` process (its own, on a fresh data directory) under a paced
//! load for minutes. Every sample says how large the SQLite files and their WALs are, and the
//! throughput and latency of that window; the end says what a clean shutdown left on disk.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use super::bench::{Latencies, PostLoad, print_latency};
use super::client::ClientArgs;

#[derive(Args, Debug)]
pub struct SoakArgs {
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Offered load in commands/s (about half the closed-loop maximum of `bench commands`).
    #[arg(long, default_value_t = 3000)]
    rate: u64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 30)]
    sample_secs: u64,
    /// The WAL ceiling the `dev` process runs with (KIROKU_SQLITE_WAL_CEILING_MIB; 0: unbounded,
    /// the behaviour before the ceiling existed).
    #[arg(long, default_value_t = 64)]
    wal_ceiling_mib: u64,
    #[arg(long, default_value_t = 1000)]
    aggregates: usize,
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Run `dev` from this kiroku binary instead of this one (e.g. an older build, to compare).
    #[arg(long)]
    dev_binary: Option<std::path::PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1048576.0)
}

/// The sizes of `name` and its WAL in `dir`, in MiB.
fn sizes(dir: &Path, name: &str) -> (f64, f64) {
    (mib(&dir.join(name)), mib(&dir.join(format!("{name}-wal"))))
}

pub async fn soak(a: SoakArgs) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let exe = match &a.dev_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()?,
    };
    let mut dev = Command::new(&exe)
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env(
            "KIROKU_SQLITE_WAL_CEILING_MIB",
            a.wal_ceiling_mib.to_string(),
        )
        .env_remove("KIROKU_JOURNAL")
        .env_remove("KIROKU_READ_STORE")
        .env_remove("KIROKU_TOKENS")
        .env_remove("KIROKU_TOKENS_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting kiroku dev")?;
    let mut lines = BufReader::new(dev.stdout.take().expect("piped")).lines();
    let target = loop {
        let Some(line) = lines.next() else {
            bail!("kiroku dev exited before listening");
        };
        if let Some((_, addr)) = line?.split_once("grpc listening on ") {
            break format!("http://{}", addr.trim());
        }
    };
    std::thread::spawn(move || lines.for_each(drop));

    let result = async {
        let load = PostLoad::connect(
            &target,
            a.connections,
            a.aggregates,
            &a.client,
        )
        .await?;
        let start = Instant::now();
        let end = start + Duration::from_secs(a.minutes * 60);
        let latencies = Arc::new(Latencies::default());
        println!(
            "bench soak: kiroku dev ({}) at {target}, {} commands/s for {} min over {} rooms, WAL ceiling {} MiB",
            exe.display(),
            a.rate,
            a.minutes,
            a.aggregates,
            if a.wal_ceiling_mib == 0 {
                "none".to_owned()
            } else {
                a.wal_ceiling_mib.to_string()
            }
        );
        println!(
            "  {:>6}  {:>10}  {:>8}  {:>8}  {:>12}  {:>12}  {:>10}  {:>10}",
            "t (s)", "cmds/s", "p50 ms", "p99 ms", "journal MiB", "journal WAL", "views MiB", "views WAL"
        );
        let mut run = Box::pin(load.run(a.concurrency, Some(a.rate), end, latencies.clone()));
        let mut ticker = tokio::time::interval(Duration::from_secs(a.sample_secs.max(1)));
        ticker.tick().await;
        let (mut peak_journal_wal, mut peak_views_wal) = (0.0_f64, 0.0_f64);
        let mut last = Instant::now();
        let mut sample = |latencies: &Latencies, last: &mut Instant| {
            let window = latencies.take_window();
            let seconds = last.elapsed().as_secs_f64();
            *last = Instant::now();
            let (journal, journal_wal) = sizes(data.path(), "journal.db");
            let (views, views_wal) = sizes(data.path(), "views.db");
            peak_journal_wal = peak_journal_wal.max(journal_wal);
            peak_views_wal = peak_views_wal.max(views_wal);
            println!(
                "  {:>6.0}  {:>10.0}  {:>8.2}  {:>8.2}  {:>12.1}  {:>12.1}  {:>10.1}  {:>10.1}",
                start.elapsed().as_secs_f64(),
                window.len() as f64 / seconds,
                window.value_at_quantile(0.5) as f64 / 1000.0,
                window.value_at_quantile(0.99) as f64 / 1000.0,
                journal,
                journal_wal,
                views,
                views_wal
            );
        };
        loop {
            tokio::select! {
                done = &mut run => { done?; break; }
                _ = ticker.tick() => sample(&latencies, &mut last),
            }
        }
        sample(&latencies, &mut last);
        let total = latencies.total.lock();
        println!(
            "  whole run: {} commands = {:.0} commands/s",
            total.len(),
            total.len() as f64 / start.elapsed().as_secs_f64()
        );
        print_latency(&total);
        println!(
            "  largest WAL seen: journal {peak_journal_wal:.1} MiB, views {peak_views_wal:.1} MiB"
        );
        let errors = latencies.errors.lock();
        if !errors.is_empty() {
            println!("  errors: {errors:?}");
        }
        anyhow::Ok(())
    }
    .await;

    // A clean shutdown, as an operator's SIGTERM.
    let status = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()?;
    if !status.success() {
        bail!("could not send SIGTERM to kiroku dev");
    }
    let exited = dev.wait()?;
    let (journal, journal_wal) = sizes(data.path(), "journal.db");
    let (views, views_wal) = sizes(data.path(), "views.db");
    println!(
        "  after SIGTERM ({exited}): journal.db {journal:.1} MiB + WAL {journal_wal:.1} MiB, \
         views.db {views:.1} MiB + WAL {views_wal:.1} MiB"
    );
    result
}
