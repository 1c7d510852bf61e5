//! `kiroku`: runs the services and talks to them. Thin: parse arguments, build, run.

mod cmd;
mod journal_url;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiroku",
    version,
    about = "kiroku: an event-sourced actor system"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run everything in one process on the embedded defaults (no setup, data in ./.kiroku).
    Dev(cmd::serve::DevArgs),
    /// Run the write API alone, configured by environment variables.
    WriteApi(cmd::serve::WriteApiArgs),
    /// Run the read-model updater alone, configured by environment variables.
    ReadModelUpdater(cmd::read::StandaloneUpdaterArgs),
    /// Run the read API alone (gRPC + HTTP/JSON), configured by environment variables.
    ReadApi(cmd::read::ReadApiArgs),
    /// Rebuild a projection from the journal while the current version keeps serving.
    Rebuild(cmd::read::RebuildArgs),
    /// List, retry or skip events parked by the read-model updater.
    DeadLetters(cmd::read::DeadLetterArgs),
    /// Manage the journal (create tables).
    Journal(cmd::serve::JournalArgs),
    /// Send a command to a room.
    Room(cmd::client::RoomArgs),
    /// Query the read model: rooms, messages, a member's rooms, live updates, projection status.
    View(cmd::view::ViewArgs),
    /// Show the audit history of an aggregate.
    History(cmd::client::HistoryArgs),
    /// Show the state of an aggregate at a past version or moment.
    StateAt(cmd::client::StateAtArgs),
    /// Show (or follow) the result of a command sent earlier.
    CommandResult(cmd::client::CommandResultArgs),
    /// Measure throughput, latency and memory.
    Bench(cmd::bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the whole cause chain on one line, no backtrace — this is for people.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Dev(args) => cmd::serve::dev(args).await,
            Cmd::WriteApi(args) => cmd::serve::write_api(args).await,
            Cmd::ReadModelUpdater(args) => cmd::read::read_model_updater(args).await,
            Cmd::ReadApi(args) => cmd::read::read_api(args).await,
            Cmd::Rebuild(args) => cmd::read::rebuild_projection(args).await,
            Cmd::DeadLetters(args) => cmd::read::dead_letters(args).await,
            Cmd::Journal(args) => cmd::serve::journal(args).await,
            Cmd::Room(args) => cmd::client::room(args).await,
            Cmd::View(args) => cmd::view::view(args).await,
            Cmd::History(args) => cmd::client::history(args).await,
            Cmd::StateAt(args) => cmd::client::state_at(args).await,
            Cmd::CommandResult(args) => cmd::client::command_result(args).await,
            Cmd::Bench(args) => cmd::bench::run(args).await,
        }
    })
}
