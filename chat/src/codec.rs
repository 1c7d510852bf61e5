//! Room events to and from their protobuf form (`proto/kiroku/chat/v1/events.proto`).

use kiroku_core::{DecodeError, EncodedEvent};
use kiroku_proto::chat::v1 as pb;
use prost::Message;

use crate::RoomEvent;

/// The schema version written for every room event today.
pub const SCHEMA_VERSION: u32 = 1;

const PREFIX: &str = "kiroku.chat.v1.";

fn encoded(name: &str, message: impl Message) -> EncodedEvent {
    EncodedEvent {
        event_type: format!("{PREFIX}{name}"),
        schema_version: SCHEMA_VERSION,
        payload: message.encode_to_vec(),
    }
}

pub fn encode(event: &RoomEvent) -> EncodedEvent {
    match event.clone() {
        RoomEvent::Created { name, owner } => {
            encoded("RoomCreated", pb::RoomCreated { name, owner })
        }
        RoomEvent::Renamed { name } => encoded("RoomRenamed", pb::RoomRenamed { name }),
        RoomEvent::MemberAdded { user_id } => encoded("MemberAdded", pb::MemberAdded { user_id }),
        RoomEvent::MemberRemoved { user_id } => {
            encoded("MemberRemoved", pb::MemberRemoved { user_id })
        }
        RoomEvent::MessagePosted {
            message_id,
            author,
            body,
        } => encoded(
            "MessagePosted",
            pb::MessagePosted {
                message_id,
                author,
                body,
            },
        ),
        RoomEvent::MessageEdited { message_id, body } => {
            encoded("MessageEdited", pb::MessageEdited { message_id, body })
        }
        RoomEvent::MessageDeleted { message_id } => {
            encoded("MessageDeleted", pb::MessageDeleted { message_id })
        }
        RoomEvent::Archived => encoded("RoomArchived", pb::RoomArchived {}),
    }
}

pub fn decode(
    event_type: &str,
    schema_version: u32,
    payload: &[u8],
) -> Result<RoomEvent, DecodeError> {
    let error = |reason: String| DecodeError {
        event_type: event_type.to_owned(),
        schema_version,
        reason,
    };
    if schema_version != SCHEMA_VERSION {
        return Err(error(format!(
            "unknown schema version, this build reads version {SCHEMA_VERSION}"
        )));
    }
    let name = event_type
        .strip_prefix(PREFIX)
        .ok_or_else(|| error("not a room event".into()))?;
    fn parse<M: Message + Default>(payload: &[u8]) -> Result<M, String> {
        M::decode(payload).map_err(|e| e.to_string())
    }
    let event = match name {
        "RoomCreated" => parse::<pb::RoomCreated>(payload).map(|m| RoomEvent::Created {
            name: m.name,
            owner: m.owner,
        }),
        "RoomRenamed" => {
            parse::<pb::RoomRenamed>(payload).map(|m| RoomEvent::Renamed { name: m.name })
        }
        "MemberAdded" => {
            parse::<pb::MemberAdded>(payload).map(|m| RoomEvent::MemberAdded { user_id: m.user_id })
        }
        "MemberRemoved" => parse::<pb::MemberRemoved>(payload)
            .map(|m| RoomEvent::MemberRemoved { user_id: m.user_id }),
        "MessagePosted" => parse::<pb::MessagePosted>(payload).map(|m| RoomEvent::MessagePosted {
            message_id: m.message_id,
            author: m.author,
            body: m.body,
        }),
        "MessageEdited" => parse::<pb::MessageEdited>(payload).map(|m| RoomEvent::MessageEdited {
            message_id: m.message_id,
            body: m.body,
        }),
        "MessageDeleted" => {
            parse::<pb::MessageDeleted>(payload).map(|m| RoomEvent::MessageDeleted {
                message_id: m.message_id,
            })
        }
        "RoomArchived" => parse::<pb::RoomArchived>(payload).map(|_| RoomEvent::Archived),
        _ => Err("unknown room event type".to_owned()),
    };
    event.map_err(error)
}
