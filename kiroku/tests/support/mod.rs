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
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).env("KIROKU_LOG", "warn");
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

/// Starts a process and waits for the first stdout line containing `marker`.
pub fn start_until(args: &[&str], env: &[(&str, &str)], marker: &str) -> (Child, String) {
    let mut child = command(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kiroku");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let found = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("kiroku {args:?} exited before printing {marker:?}"))
            .unwrap();
        if line.contains(marker) {
            break line;
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, found)
}

pub fn dev(data: &Path) -> Kiroku {
    start(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    )
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
