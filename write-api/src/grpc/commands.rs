//! `kiroku.v1.CommandService`: commands for the chat domain and their results.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kiroku_chat::{Room, RoomCommand};
use kiroku_core::Caller;
use kiroku_proto::v1::command_service_server::CommandService;
use kiroku_proto::v1::{
    CommandReply, CommandResult, CommandState as PbState, ExecuteRequest, GetCommandResultRequest,
    WaitMode, execute_request::Command as Pb,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::status::{from_command_error, public};
use crate::runtime::{
    AggregateRuntime, CommandError, CommandMeta, CommandState, Executed, outcome_of,
};
use kiroku_proto::auth::identity;

/// Namespaces for ids derived from `(principal, command_id)`, so a resent command names the same
/// room or message.
const ROOM_NS: Uuid = Uuid::from_u128(0x6b69726f_6b75_4000_8000_726f6f6d0001);
const MESSAGE_NS: Uuid = Uuid::from_u128(0x6b69726f_6b75_4000_8000_6d7367000002);

/// Waits until the read model shows an aggregate's version (for `WAIT_MODE_PROJECTED`).
#[tonic::async_trait]
pub trait ProjectionWait: Send + Sync + 'static {
    /// Whether the views reached `version` of `aggregate_id` within `timeout`; an error when
    /// the read store failed (the command's reply then says `projected = false`).
    async fn wait_projected(
        &self,
        aggregate_id: &str,
        version: u64,
        timeout: Duration,
    ) -> Result<bool, String>;
}

const DEFAULT_PROJECTED_WAIT: Duration = Duration::from_secs(5);
const MAX_PROJECTED_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct CommandApi {
    rooms: AggregateRuntime<Room>,
    projections: Option<Arc<dyn ProjectionWait>>,
}

impl CommandApi {
    pub fn new(
        rooms: AggregateRuntime<Room>,
        projections: Option<Arc<dyn ProjectionWait>>,
    ) -> Self {
        Self { rooms, projections }
    }
}

/// The caller's deadline (`grpc-timeout`), if it sent one.
fn deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn check_id(what: &str, value: &str) -> Result<(), Status> {
    kiroku_core::ids::check_id(what, value).map_err(Status::invalid_argument)
}

fn derived(ns: &Uuid, principal: &str, command_id: &str) -> String {
    Uuid::new_v5(ns, format!("{principal}\n{command_id}").as_bytes()).to_string()
}

/// A validated command, ready for the runtime.
struct Parsed {
    room_id: String,
    command: RoomCommand,
    meta: CommandMeta,
    wait: WaitMode,
}

fn parse(request: ExecuteRequest, caller: Caller) -> Result<Parsed, Status> {
    let meta = request.meta.unwrap_or_default();
    let wait = WaitMode::try_from(meta.wait)
        .map_err(|_| Status::invalid_argument(format!("unknown wait mode {}", meta.wait)))?;
    let command_id = if meta.command_id.is_empty() {
        Uuid::now_v7().to_string()
    } else {
        meta.command_id
    };
    check_id("command_id", &command_id)?;
    check_id("correlation_id", &meta.correlation_id)?;
    check_id("causation_id", &meta.causation_id)?;
    let or_command_id = |s: String| if s.is_empty() { command_id.clone() } else { s };
    let correlation_id = or_command_id(meta.correlation_id);
    let causation_id = or_command_id(meta.causation_id);
    let command = request
        .command
        .ok_or_else(|| Status::invalid_argument("the request names no command"))?;
    let principal = caller.principal.clone();
    let command = match command {
        Pb::CreateRoom(c) => RoomCommand::Create { name: c.name },
        Pb::RenameRoom(c) => RoomCommand::Rename { name: c.name },
        Pb::AddMember(c) => RoomCommand::AddMember { user_id: c.user_id },
        Pb::RemoveMember(c) => RoomCommand::RemoveMember { user_id: c.user_id },
        Pb::PostMessage(c) => RoomCommand::PostMessage {
            message_id: if c.message_id.is_empty() {
                derived(&MESSAGE_NS, &principal, &command_id)
            } else {
                c.message_id
            },
            body: c.body,
        },
        Pb::EditMessage(c) => RoomCommand::EditMessage {
            message_id: c.message_id,
            body: c.body,
        },
        Pb::DeleteMessage(c) => RoomCommand::DeleteMessage {
            message_id: c.message_id,
        },
        Pb::ArchiveRoom(_) => RoomCommand::Archive,
    };
    let room_id = match (&command, request.room_id.is_empty()) {
        (RoomCommand::Create { .. }, true) => derived(&ROOM_NS, &principal, &command_id),
        (_, true) => return Err(Status::invalid_argument("room_id is required")),
        (_, false) => request.room_id,
    };
    check_id("room_id", &room_id)?;
    let meta = CommandMeta {
        command_id,
        caller,
        expected_version: meta.expected_version,
        correlation_id,
        causation_id,
    };
    Ok(Parsed {
        room_id,
        command,
        meta,
        wait,
    })
}

fn reply(command_id: &str, e: &Executed) -> CommandReply {
    CommandReply {
        command_id: command_id.to_owned(),
        room_id: e.stream.aggregate_id.clone(),
        version: e.version,
        first_sequence: e.first_sequence,
        last_sequence: e.last_sequence,
        duplicate: e.duplicate,
        accepted_only: false,
        projected: false,
    }
}

fn result_message(command_id: &str, state: &CommandState) -> CommandResult {
    let mut out = CommandResult {
        command_id: command_id.to_owned(),
        ..Default::default()
    };
    match state {
        CommandState::Pending => out.state = PbState::Pending as i32,
        CommandState::Done(Ok(executed)) => {
            out.state = PbState::Succeeded as i32;
            out.reply = Some(reply(command_id, executed));
        }
        CommandState::Done(Err(e)) => {
            out.state = if e.is_decision() {
                PbState::Rejected
            } else {
                PbState::Failed
            } as i32;
            out.error_code = e.code() as i32;
            // A failure's detail (journal text) goes to the log, not to the client.
            out.error_message = public(e).message;
        }
    }
    out
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<CommandResult, Status>> + Send>>;

impl CommandApi {
    /// The command's state for `principal`: in flight, decided (journal), or unknown.
    async fn lookup(&self, principal: &str, command_id: &str) -> Result<Lookup, Status> {
        if let Some(rx) = self.rooms.pending().watch(principal, command_id) {
            return Ok(Lookup::InFlight(rx));
        }
        let record = self
            .rooms
            .journal()
            .command_record(principal, command_id)
            .await
            .map_err(super::status::journal)?;
        match record {
            Some(r) => Ok(Lookup::Decided(CommandState::Done(outcome_of(&r, false)))),
            None => Err(Status::not_found(format!(
                "no command {command_id} of yours is known: it was never received, or it failed before it \
                 was decided; resending it with the same command_id is safe"
            ))),
        }
    }
}

enum Lookup {
    InFlight(tokio::sync::watch::Receiver<CommandState>),
    Decided(CommandState),
}

#[tonic::async_trait]
impl CommandService for CommandApi {
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        let caller = Caller::new(identity(&request)?.principal);
        // Leave a little of the caller's deadline for the reply itself.
        let projected_wait = deadline(&request)
            .map(|d| d.saturating_sub(Duration::from_millis(50)))
            .unwrap_or(DEFAULT_PROJECTED_WAIT)
            .min(MAX_PROJECTED_WAIT);
        let Parsed {
            room_id,
            command,
            meta,
            wait,
        } = parse(request.into_inner(), caller)?;
        let command_id = meta.command_id.clone();
        match wait {
            WaitMode::Accepted => {
                self.rooms
                    .submit(&room_id, command, meta)
                    .await
                    .map_err(|e| from_command_error(&e))?;
                Ok(Response::new(CommandReply {
                    command_id,
                    room_id,
                    accepted_only: true,
                    ..Default::default()
                }))
            }
            WaitMode::Unspecified | WaitMode::Persisted => {
                let executed = self
                    .rooms
                    .execute(&room_id, command, meta)
                    .await
                    .map_err(|e: CommandError| from_command_error(&e))?;
                Ok(Response::new(reply(&command_id, &executed)))
            }
            WaitMode::Projected => {
                let projections = self.projections.as_ref().ok_or_else(|| {
                    Status::failed_precondition(
                        "WAIT_MODE_PROJECTED needs the read model in this process (kiroku dev); \
                         this write API runs without one: use WAIT_MODE_PERSISTED and query the \
                         read API with the returned version as consistency token",
                    )
                })?;
                let executed = self
                    .rooms
                    .execute(&room_id, command, meta)
                    .await
                    .map_err(|e: CommandError| from_command_error(&e))?;
                let mut reply = reply(&command_id, &executed);
                // The command is durable whatever the read side does: a failing read store
                // makes this a plain success that is not (yet) projected, never an error.
                reply.projected = match projections
                    .wait_projected(&reply.room_id, reply.version, projected_wait)
                    .await
                {
                    Ok(projected) => projected,
                    Err(error) => {
                        tracing::warn!(
                            %error,
                            %command_id,
                            room_id = %reply.room_id,
                            version = reply.version,
                            "the read model failed during a projected wait; replying projected=false"
                        );
                        false
                    }
                };
                Ok(Response::new(reply))
            }
        }
    }

    async fn get_command_result(
        &self,
        request: Request<GetCommandResultRequest>,
    ) -> Result<Response<CommandResult>, Status> {
        let principal = identity(&request)?.principal;
        let command_id = request.into_inner().command_id;
        check_id("command_id", &command_id)?;
        let state = match self.lookup(&principal, &command_id).await? {
            Lookup::InFlight(rx) => rx.borrow().clone(),
            Lookup::Decided(state) => state,
        };
        Ok(Response::new(result_message(&command_id, &state)))
    }

    type WatchCommandStream = ResultStream;

    async fn watch_command(
        &self,
        request: Request<GetCommandResultRequest>,
    ) -> Result<Response<ResultStream>, Status> {
        let principal = identity(&request)?.principal;
        let command_id = request.into_inner().command_id;
        check_id("command_id", &command_id)?;
        let stream: ResultStream = match self.lookup(&principal, &command_id).await? {
            Lookup::Decided(state) => {
                Box::pin(tokio_stream::once(Ok(result_message(&command_id, &state))))
            }
            Lookup::InFlight(mut rx) => {
                let (tx, out) = tokio::sync::mpsc::channel(2);
                tokio::spawn(async move {
                    let first = rx.borrow_and_update().clone();
                    if tx
                        .send(Ok(result_message(&command_id, &first)))
                        .await
                        .is_err()
                        || first != CommandState::Pending
                    {
                        return;
                    }
                    let last = rx
                        .wait_for(|s| *s != CommandState::Pending)
                        .await
                        .map(|s| s.clone());
                    if let Ok(last) = last {
                        let _ = tx.send(Ok(result_message(&command_id, &last))).await;
                    }
                });
                Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
            }
        };
        Ok(Response::new(stream))
    }
}
