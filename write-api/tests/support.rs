//! `spawn_app()`: the real write API on a random port over a real SQLite journal.

#![allow(dead_code)]

use std::sync::Arc;

use kiroku_chat::Room;
use kiroku_journal::{SqliteJournal, SqliteJournalOptions};
use kiroku_proto::v1::command_service_client::CommandServiceClient;
use kiroku_proto::v1::history_service_client::HistoryServiceClient;
use kiroku_proto::v1::{self as pb, CommandMeta, ExecuteRequest, execute_request::Command};
use kiroku_write_api::grpc::{Auth, PRINCIPAL_HEADER, WriteApi, WriteApiConfig};
use kiroku_write_api::runtime::{AggregateRuntime, RuntimeConfig};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub struct App {
    pub url: String,
    pub rooms: AggregateRuntime<Room>,
    pub journal: SqliteJournal,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn spawn_app(auth: Auth) -> App {
    spawn_app_with(auth, RuntimeConfig::default()).await
}

pub async fn spawn_app_with(auth: Auth, config: RuntimeConfig) -> App {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(
        dir.path().join("journal.db"),
        SqliteJournalOptions::default(),
    )
    .unwrap();
    let rooms = AggregateRuntime::<Room>::new(Arc::new(journal.clone()), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let api = WriteApi {
        rooms: rooms.clone(),
        auth,
        config: WriteApiConfig::default(),
        projections: None,
        extra_routes: None,
    };
    tokio::spawn(api.serve(listener, async move {
        let _ = stopped.await;
    }));
    App {
        url,
        rooms,
        journal,
        stop: Some(stop),
        _dir: dir,
    }
}

/// Sets the credentials on every request: a bearer token, or (dev mode) a principal header.
#[derive(Clone)]
pub enum As {
    Principal(&'static str),
    Token(&'static str),
    Nobody,
}

#[derive(Clone)]
pub struct Creds(As);

impl tonic::service::Interceptor for Creds {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        match &self.0 {
            As::Principal(p) => {
                req.metadata_mut()
                    .insert(PRINCIPAL_HEADER, AsciiMetadataValue::from_static(p));
            }
            As::Token(t) => {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            As::Nobody => {}
        }
        Ok(req)
    }
}

pub type Commands = CommandServiceClient<InterceptedService<Channel, Creds>>;
pub type History = HistoryServiceClient<InterceptedService<Channel, Creds>>;

impl App {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn commands(&self, who: As) -> Commands {
        CommandServiceClient::with_interceptor(self.channel().await, Creds(who))
    }

    pub async fn history(&self, who: As) -> History {
        HistoryServiceClient::with_interceptor(self.channel().await, Creds(who))
    }

    pub async fn highest(&self, room: &str) -> u64 {
        use kiroku_journal::Journal;
        self.journal
            .highest_sequence(&kiroku_journal::StreamId::new("room", room))
            .await
            .unwrap()
    }
}

pub fn request(room: &str, command_id: &str, command: Command) -> ExecuteRequest {
    ExecuteRequest {
        meta: Some(CommandMeta {
            command_id: command_id.into(),
            ..Default::default()
        }),
        room_id: room.into(),
        command: Some(command),
    }
}

pub fn create(name: &str) -> Command {
    Command::CreateRoom(pb::CreateRoom { name: name.into() })
}

pub fn post(body: &str) -> Command {
    Command::PostMessage(pb::PostMessage {
        message_id: String::new(),
        body: body.into(),
    })
}

pub fn add(user: &str) -> Command {
    Command::AddMember(pb::AddMember {
        user_id: user.into(),
    })
}
