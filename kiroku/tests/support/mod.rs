//! Shared by the process tests: the real `kiroku` binary on random ports.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use kiroku_proto::v1::{self as pb, CommandMeta, ExecuteRequest, execute_request::Command as C};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_kiroku");

pub struct Kiroku {
    pub child: Child,
    pub url: String,
}

impl Drop for Kiroku {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in [
        "KIROKU_TOKENS",
        "KIROKU_TOKENS_FILE",
        "KIROKU_LISTEN",
        "KIROKU_JOURNAL",
        "KIROKU_DATA_DIR",
        "KIROKU_SERVER",
        "KIROKU_READ_STORE",
        "KIROKU_HTTP_LISTEN",
        "KIROKU_SQLITE_WAL_CEILING_MIB",
        "KIROKU_READ_MAX_WAITS",
        "KIROKU_READ_MAX_WAITS_PER_PRINCIPAL",
        "KIROKU_READ_MAX_STREAMS",
        "KIROKU_READ_MAX_STREAMS_PER_PRINCIPAL",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).env(
        "KIROKU_LOG",
        std::env::var("KIROKU_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd
}

/// Starts a service and waits for its "grpc listening on ADDR" line.
pub fn start(args: &[&str], env: &[(&str, &str)]) -> Kiroku {
    let (child, line) = start_until(args, env, "grpc listening on ");
    let addr = line.split_once("grpc listening on ").unwrap().1.trim();
    Kiroku {
        child,
        url: format!("http://{addr}"),
    }
}

/// A service with an HTTP face too: the address after "http listening on " (printed before the
/// gRPC line).
pub struct Served {
    pub kiroku: Kiroku,
    pub http: String,
}

/// Starts a service that serves gRPC and HTTP and waits until both listen.
pub fn start_served(args: &[&str], env: &[(&str, &str)]) -> Served {
    let (child, lines) = start_lines(args, env, "grpc listening on ");
    let addr = |marker: &str| {
        let line = lines
            .iter()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("kiroku {args:?} printed no {marker:?} line: {lines:?}"));
        format!(
            "http://{}",
            line.split_once(marker)
                .unwrap()
                .1
                .split_whitespace()
                .next()
                .unwrap()
        )
    };
    let (grpc, http) = (addr("grpc listening on "), addr("http listening on "));
    Served {
        kiroku: Kiroku { child, url: grpc },
        http,
    }
}

/// `kiroku dev` with its read API's HTTP face on a random port too.
pub fn dev_served(data: &Path) -> Served {
    dev_served_with(data, &[], &[])
}

/// `kiroku dev` on random ports with more arguments and environment.
pub fn dev_served_with(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut all = vec![
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    start_served(&all, env)
}

/// The newest global position in a SQLite journal, read without opening it for writing.
pub fn journal_head(path: &Path) -> u64 {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT coalesce(max(global_position), 0) FROM events",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as u64
}

/// Starts a process and waits for the first stdout line containing `marker`.
pub fn start_until(args: &[&str], env: &[(&str, &str)], marker: &str) -> (Child, String) {
    let (child, mut lines) = start_lines(args, env, marker);
    (child, lines.pop().unwrap())
}

/// Starts a process and returns its stdout lines up to and including the first containing
/// `marker`.
pub fn start_lines(args: &[&str], env: &[(&str, &str)], marker: &str) -> (Child, Vec<String>) {
    let mut child = command(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kiroku");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("kiroku {args:?} exited before printing {marker:?}"))
            .unwrap();
        let found = line.contains(marker);
        seen.push(line);
        if found {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (child, seen)
}

pub fn dev(data: &Path) -> Kiroku {
    dev_served(data).kiroku
}

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub fn as_principal(principal: &'static str) -> impl tonic::service::Interceptor + Clone {
    move |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("x-kiroku-principal", principal.parse().unwrap());
        Ok(r)
    }
}

pub fn exec(room: &str, command_id: &str, command: C) -> ExecuteRequest {
    ExecuteRequest {
        meta: Some(CommandMeta {
            command_id: command_id.into(),
            ..Default::default()
        }),
        room_id: room.into(),
        command: Some(command),
    }
}

pub fn post(body: &str) -> C {
    C::PostMessage(pb::PostMessage {
        message_id: String::new(),
        body: body.into(),
    })
}
