//! Client subcommands: send commands, read history and past states, follow command results.

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use kiroku_proto::v1::command_service_client::CommandServiceClient;
use kiroku_proto::v1::history_service_client::HistoryServiceClient;
use kiroku_proto::v1::read_service_client::ReadServiceClient;
use kiroku_proto::v1::{
    self as pb, CommandMeta, ExecuteRequest, GetCommandResultRequest, HistoryRequest,
    StateAtRequest, execute_request::Command as Pb, state_at_request::At,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server to talk to (`kiroku dev` serves commands and reads on one port).
    #[arg(
        long,
        global = true,
        env = "KIROKU_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Bearer token (required unless the server runs `kiroku dev` without tokens).
    #[arg(long, global = true, env = "KIROKU_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Act as this principal (only honoured by `kiroku dev` without tokens).
    #[arg(long = "as", global = true, env = "KIROKU_AS")]
    as_principal: Option<String>,
}

/// Adds the credentials to every call.
#[derive(Clone)]
pub struct Credentials {
    authorization: Option<AsciiMetadataValue>,
    principal: Option<AsciiMetadataValue>,
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.authorization {
            request.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(v) = &self.principal {
            request
                .metadata_mut()
                .insert(kiroku_write_api::grpc::PRINCIPAL_HEADER, v.clone());
        }
        Ok(request)
    }
}

pub type Commands = CommandServiceClient<InterceptedService<Channel, Credentials>>;
pub type History = HistoryServiceClient<InterceptedService<Channel, Credentials>>;
pub type Reads = ReadServiceClient<InterceptedService<Channel, Credentials>>;

impl ClientArgs {
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let authorization = match &self.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .context("the token has characters a header cannot carry")?,
            ),
            None => None,
        };
        let principal = match &self.as_principal {
            Some(p) => Some(
                p.parse()
                    .context("--as has characters a header cannot carry")?,
            ),
            None => None,
        };
        Ok(Credentials {
            authorization,
            principal,
        })
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Channel::from_shared(self.server.clone())
            .with_context(|| format!("invalid server address {}", self.server))?
            .connect()
            .await
            .with_context(|| format!("cannot reach {}", self.server))
    }

    pub async fn commands(&self) -> anyhow::Result<Commands> {
        Ok(CommandServiceClient::with_interceptor(
            self.channel().await?,
            self.credentials()?,
        ))
    }

    pub async fn reads(&self) -> anyhow::Result<Reads> {
        Ok(ReadServiceClient::with_interceptor(
            self.channel().await?,
            self.credentials()?,
        ))
    }

    pub async fn history(&self) -> anyhow::Result<History> {
        Ok(HistoryServiceClient::with_interceptor(
            self.channel().await?,
            self.credentials()?,
        ))
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Wait {
    /// Reply when the events are durable.
    Persisted,
    /// Reply when the command is admitted; see `kiroku command-result`.
    Accepted,
    /// Reply when the read model shows the command (kiroku dev).
    Projected,
}

#[derive(Args, Debug)]
pub struct RoomArgs {
    #[command(subcommand)]
    command: RoomCommand,
    /// Idempotency key; resending it returns the first result. Generated when absent.
    #[arg(long, global = true)]
    command_id: Option<String>,
    /// Refuse (ABORTED) unless the room is at this version.
    #[arg(long, global = true)]
    expected_version: Option<u64>,
    #[arg(long, global = true)]
    correlation_id: Option<String>,
    #[arg(long, global = true, value_enum, default_value_t = Wait::Persisted)]
    wait: Wait,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
enum RoomCommand {
    /// Create a room (you become its owner). Prints the room id.
    Create {
        name: String,
        /// Choose the room id (derived from the command id when absent).
        #[arg(long)]
        room: Option<String>,
    },
    Rename {
        room: String,
        name: String,
    },
    AddMember {
        room: String,
        user: String,
    },
    RemoveMember {
        room: String,
        user: String,
    },
    Post {
        room: String,
        body: String,
        #[arg(long)]
        message_id: Option<String>,
    },
    Edit {
        room: String,
        message_id: String,
        body: String,
    },
    DeleteMessage {
        room: String,
        message_id: String,
    },
    Archive {
        room: String,
    },
}

pub async fn room(args: RoomArgs) -> anyhow::Result<()> {
    use RoomCommand as R;
    let (room_id, command) = match args.command {
        R::Create { name, room } => (
            room.unwrap_or_default(),
            Pb::CreateRoom(pb::CreateRoom { name }),
        ),
        R::Rename { room, name } => (room, Pb::RenameRoom(pb::RenameRoom { name })),
        R::AddMember { room, user } => (room, Pb::AddMember(pb::AddMember { user_id: user })),
        R::RemoveMember { room, user } => {
            (room, Pb::RemoveMember(pb::RemoveMember { user_id: user }))
        }
        R::Post {
            room,
            body,
            message_id,
        } => (
            room,
            Pb::PostMessage(pb::PostMessage {
                message_id: message_id.unwrap_or_default(),
                body,
            }),
        ),
        R::Edit {
            room,
            message_id,
            body,
        } => (room, Pb::EditMessage(pb::EditMessage { message_id, body })),
        R::DeleteMessage { room, message_id } => {
            (room, Pb::DeleteMessage(pb::DeleteMessage { message_id }))
        }
        R::Archive { room } => (room, Pb::ArchiveRoom(pb::ArchiveRoom {})),
    };
    let wait = match args.wait {
        Wait::Persisted => pb::WaitMode::Persisted,
        Wait::Accepted => pb::WaitMode::Accepted,
        Wait::Projected => pb::WaitMode::Projected,
    };
    let request = ExecuteRequest {
        meta: Some(CommandMeta {
            command_id: args.command_id.unwrap_or_default(),
            expected_version: args.expected_version,
            correlation_id: args.correlation_id.unwrap_or_default(),
            causation_id: String::new(),
            wait: wait as i32,
        }),
        room_id,
        command: Some(command),
    };
    let reply = args
        .client
        .commands()
        .await?
        .execute(request)
        .await
        .map_err(status_error)?
        .into_inner();
    println!("command_id={}", reply.command_id);
    println!("room_id={}", reply.room_id);
    if reply.accepted_only {
        println!(
            "state=accepted (follow it with: kiroku command-result {} --watch)",
            reply.command_id
        );
    } else {
        println!("version={}", reply.version);
        println!("events={}..={}", reply.first_sequence, reply.last_sequence);
        if reply.duplicate {
            println!("duplicate=true (this command id was decided before; nothing was appended)");
        }
    }
    Ok(())
}

/// A gRPC error as a person reads it.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    room: String,
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Stop after this many events (all when absent).
    #[arg(long)]
    limit: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let mut client = args.client.history().await?;
    let mut from = args.from;
    let mut left = args.limit.unwrap_or(u64::MAX);
    let mut header = true;
    while left > 0 {
        let page = client
            .get_history(HistoryRequest {
                aggregate_type: String::new(),
                aggregate_id: args.room.clone(),
                from_sequence: from,
                limit: left.min(1000) as u32,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        if std::mem::take(&mut header) {
            println!(
                "{:>5}  {:<24}  {:<12}  {:<36}  event",
                "seq", "time (UTC)", "principal", "command id"
            );
        }
        for e in &page.events {
            println!(
                "{:>5}  {:<24}  {:<12}  {:<36}  {}",
                e.sequence,
                format_ms(e.timestamp_ms),
                e.principal,
                e.command_id,
                e.event_json
            );
        }
        left = left.saturating_sub(page.events.len() as u64);
        if page.next_sequence == 0 {
            break;
        }
        from = page.next_sequence;
    }
    Ok(())
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days, no extra crate).
pub fn format_ms(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[derive(Args, Debug)]
pub struct StateAtArgs {
    room: String,
    /// Fold events up to this version.
    #[arg(long, conflicts_with = "at_ms", required_unless_present = "at_ms")]
    version: Option<u64>,
    /// Fold events up to this moment (milliseconds since the Unix epoch).
    #[arg(long)]
    at_ms: Option<i64>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn state_at(args: StateAtArgs) -> anyhow::Result<()> {
    let at = match (args.version, args.at_ms) {
        (Some(v), _) => At::Version(v),
        (None, Some(t)) => At::TimestampMs(t),
        (None, None) => bail!("give --version or --at-ms"),
    };
    let reply = args
        .client
        .history()
        .await?
        .get_state_at(StateAtRequest {
            aggregate_type: String::new(),
            aggregate_id: args.room,
            at: Some(at),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("version={}", reply.version);
    println!("{}", reply.state_json);
    Ok(())
}

#[derive(Args, Debug)]
pub struct CommandResultArgs {
    command_id: String,
    /// Follow the command until it is decided.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn print_result(r: &pb::CommandResult) {
    let state = pb::CommandState::try_from(r.state).map_or("unknown", |s| s.as_str_name());
    print!(
        "command_id={} state={}",
        r.command_id,
        state.trim_start_matches("COMMAND_STATE_").to_lowercase()
    );
    if let Some(reply) = &r.reply {
        print!(" room_id={} version={}", reply.room_id, reply.version);
    }
    if !r.error_message.is_empty() {
        print!(
            " code={:?} error={:?}",
            tonic::Code::from_i32(r.error_code),
            r.error_message
        );
    }
    println!();
}

pub async fn command_result(args: CommandResultArgs) -> anyhow::Result<()> {
    let mut client = args.client.commands().await?;
    let request = GetCommandResultRequest {
        command_id: args.command_id,
    };
    if args.watch {
        let mut stream = client
            .watch_command(request)
            .await
            .map_err(status_error)?
            .into_inner();
        while let Some(r) = stream.message().await.map_err(status_error)? {
            print_result(&r);
        }
    } else {
        print_result(
            &client
                .get_command_result(request)
                .await
                .map_err(status_error)?
                .into_inner(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_epoch_milliseconds() {
        assert_eq!(super::format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::format_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            super::format_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
