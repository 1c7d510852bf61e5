//! `kiroku view …`: the read API from the command line (room summaries, messages, a member's
//! rooms, live updates, projection status).

use clap::{Args, Subcommand};
use kiroku_proto::v1::{self as pb};
use kiroku_read_api::ConsistencyToken;

use super::client::{ClientArgs, format_ms, status_error};

#[derive(Args, Debug)]
pub struct ViewArgs {
    #[command(subcommand)]
    command: ViewCommand,
    /// Read-your-writes: wait until the views show this room version (`ROOM_ID:VERSION`, as a
    /// command prints them).
    #[arg(long, global = true)]
    consistent_with: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
enum ViewCommand {
    /// A room's summary.
    Room { room: String },
    /// A room's messages, newest first.
    Messages {
        room: String,
        #[arg(long, default_value = "")]
        cursor: String,
        #[arg(long, default_value_t = 20)]
        page_size: u32,
    },
    /// The rooms a user is a member of.
    MemberRooms {
        user: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Follow a room: print its changes as they are projected (Ctrl-C to stop).
    Watch {
        room: String,
        #[arg(long, default_value_t = 0)]
        after_version: u64,
    },
    /// A projection's position, lag and dead letters.
    Status {
        #[arg(default_value = "rooms")]
        projection: String,
    },
}

fn consistency(spec: Option<&str>) -> anyhow::Result<Option<pb::Consistency>> {
    let Some(spec) = spec else { return Ok(None) };
    let (id, version) = ConsistencyToken::split(spec)
        .ok_or_else(|| anyhow::anyhow!("--consistent-with {spec:?} is not ROOM_ID:VERSION"))?;
    Ok(Some(pb::Consistency {
        aggregate_id: id.to_owned(),
        version,
        timeout_ms: 0,
    }))
}

fn print_room(r: &pb::RoomSummary) {
    println!(
        "room {} {:?} owner={} members={} messages={} archived={} version={} last_activity={}",
        r.room_id,
        r.name,
        r.owner,
        r.members.join(","),
        r.message_count,
        r.archived,
        r.version,
        format_ms(r.last_activity_ms)
    );
}

fn print_message(m: &pb::Message) {
    let flag = if m.deleted {
        " (deleted)"
    } else if m.edited {
        " (edited)"
    } else {
        ""
    };
    println!(
        "  #{:<5} {}  {}: {}{flag}   [{}]",
        m.sequence,
        format_ms(m.posted_ms),
        m.author,
        m.body,
        m.message_id
    );
}

pub async fn view(args: ViewArgs) -> anyhow::Result<()> {
    let mut reads = args.client.reads().await?;
    let consistency = consistency(args.consistent_with.as_deref())?;
    match args.command {
        ViewCommand::Room { room } => {
            let r = reads
                .get_room(pb::GetRoomRequest {
                    room_id: room,
                    consistency,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_room(&r);
        }
        ViewCommand::Messages {
            room,
            cursor,
            page_size,
        } => {
            let page = reads
                .list_messages(pb::ListMessagesRequest {
                    room_id: room,
                    cursor,
                    page_size,
                    consistency,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            page.messages.iter().for_each(print_message);
            if !page.next_cursor.is_empty() {
                println!("next page: --cursor {}", page.next_cursor);
            }
        }
        ViewCommand::MemberRooms { user, limit } => {
            let rooms = reads
                .list_member_rooms(pb::ListMemberRoomsRequest {
                    user_id: user,
                    limit,
                    consistency,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            rooms.rooms.iter().for_each(print_room);
        }
        ViewCommand::Watch {
            room,
            after_version,
        } => {
            let mut updates = reads
                .watch_room(pb::WatchRoomRequest {
                    room_id: room,
                    after_version,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            while let Some(u) = updates.message().await.map_err(status_error)? {
                u.messages.iter().for_each(print_message);
                match &u.room {
                    Some(r) => print_room(r),
                    None => println!("version={}", u.version),
                }
            }
        }
        ViewCommand::Status { projection } => {
            let s = reads
                .get_projection_status(pb::GetProjectionStatusRequest { projection })
                .await
                .map_err(status_error)?
                .into_inner();
            let known = |v: Option<u64>| v.map_or("unknown".to_owned(), |v| v.to_string());
            println!(
                "projection={} active_version={} building={} position={} head={} lag_events={} lag_seconds={:.3} dead_letters={}",
                s.projection,
                s.active_version,
                s.building_version
                    .map_or("none".to_owned(), |v| v.to_string()),
                s.position,
                known(s.head),
                known(s.lag_events),
                s.lag_seconds,
                s.dead_letters
            );
        }
    }
    Ok(())
}
