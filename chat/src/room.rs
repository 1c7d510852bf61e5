use std::collections::{BTreeSet, HashMap};

use kiroku_core::{Aggregate, Caller, DecodeError, EncodedEvent, Rejection};
use serde::{Deserialize, Serialize};

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_BODY_CHARS: usize = 4000;
/// User ids and message ids.
pub const MAX_ID_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomCommand {
    Create { name: String },
    Rename { name: String },
    AddMember { user_id: String },
    RemoveMember { user_id: String },
    PostMessage { message_id: String, body: String },
    EditMessage { message_id: String, body: String },
    DeleteMessage { message_id: String },
    Archive,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomEvent {
    Created {
        name: String,
        owner: String,
    },
    Renamed {
        name: String,
    },
    MemberAdded {
        user_id: String,
    },
    MemberRemoved {
        user_id: String,
    },
    MessagePosted {
        message_id: String,
        author: String,
        body: String,
    },
    MessageEdited {
        message_id: String,
        body: String,
    },
    MessageDeleted {
        message_id: String,
    },
    Archived,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageInfo {
    pub author: String,
    pub deleted: bool,
}

/// A room's state: what its rules need, not what its views show (bodies live in the read model).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub created: bool,
    pub name: String,
    pub owner: String,
    pub members: BTreeSet<String>,
    pub messages: HashMap<String, MessageInfo>,
    pub archived: bool,
}

fn check_text(what: &str, value: &str, max: usize) -> Result<(), Rejection> {
    let chars = value.chars().count();
    if value.trim().is_empty() {
        return Err(Rejection::invalid(format!("{what} must not be empty")));
    }
    if chars > max {
        return Err(Rejection::invalid(format!(
            "{what} is {chars} characters long, the limit is {max}"
        )));
    }
    Ok(())
}

fn check_id(what: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::invalid(format!("{what} must not be empty")));
    }
    if value.chars().count() > MAX_ID_CHARS {
        return Err(Rejection::invalid(format!(
            "{what} is longer than {MAX_ID_CHARS} characters"
        )));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Rejection::invalid(format!(
            "{what} must not contain whitespace or control characters"
        )));
    }
    Ok(())
}

impl Room {
    fn require_member(&self, caller: &Caller) -> Result<(), Rejection> {
        if self.members.contains(&caller.principal) {
            Ok(())
        } else {
            Err(Rejection::precondition(format!(
                "{} is not a member of the room",
                caller.principal
            )))
        }
    }

    fn require_owner(&self, caller: &Caller, action: &str) -> Result<(), Rejection> {
        if self.owner == caller.principal {
            Ok(())
        } else {
            Err(Rejection::precondition(format!(
                "only the owner can {action}"
            )))
        }
    }

    /// The live message `message_id`, which `caller` must have written.
    fn own_message(
        &self,
        caller: &Caller,
        message_id: &str,
        action: &str,
    ) -> Result<(), Rejection> {
        match self.messages.get(message_id) {
            Some(m) if !m.deleted => {
                if m.author == caller.principal {
                    Ok(())
                } else {
                    Err(Rejection::precondition(format!(
                        "only the author can {action} message {message_id}"
                    )))
                }
            }
            _ => Err(Rejection::not_found(format!(
                "message {message_id} does not exist"
            ))),
        }
    }
}

impl Aggregate for Room {
    const TYPE: &'static str = "room";
    type Command = RoomCommand;
    type Event = RoomEvent;

    fn handle(&self, caller: &Caller, command: &RoomCommand) -> Result<Vec<RoomEvent>, Rejection> {
        use RoomCommand as C;
        use RoomEvent as E;
        if let C::Create { name } = command {
            if self.created {
                return Err(Rejection::already_exists("room already exists"));
            }
            check_text("room name", name, MAX_NAME_CHARS)?;
            return Ok(vec![E::Created {
                name: name.clone(),
                owner: caller.principal.clone(),
            }]);
        }
        if !self.created {
            return Err(Rejection::not_found("room does not exist"));
        }
        if self.archived {
            return Err(Rejection::precondition("room is archived"));
        }
        Ok(match command {
            C::Create { .. } => unreachable!("handled above"),
            C::Rename { name } => {
                check_text("room name", name, MAX_NAME_CHARS)?;
                self.require_owner(caller, "rename the room")?;
                if *name == self.name {
                    vec![]
                } else {
                    vec![E::Renamed { name: name.clone() }]
                }
            }
            C::AddMember { user_id } => {
                check_id("user id", user_id)?;
                self.require_member(caller)?;
                if self.members.contains(user_id) {
                    vec![]
                } else {
                    vec![E::MemberAdded {
                        user_id: user_id.clone(),
                    }]
                }
            }
            C::RemoveMember { user_id } => {
                check_id("user id", user_id)?;
                if *user_id != caller.principal {
                    self.require_owner(caller, "remove other members")?;
                }
                if *user_id == self.owner {
                    return Err(Rejection::precondition(
                        "the owner cannot be removed from the room",
                    ));
                }
                if !self.members.contains(user_id) {
                    return Err(Rejection::precondition(format!(
                        "{user_id} is not a member of the room"
                    )));
                }
                vec![E::MemberRemoved {
                    user_id: user_id.clone(),
                }]
            }
            C::PostMessage { message_id, body } => {
                check_id("message id", message_id)?;
                check_text("message body", body, MAX_BODY_CHARS)?;
                self.require_member(caller)?;
                if self.messages.contains_key(message_id) {
                    return Err(Rejection::already_exists(format!(
                        "message {message_id} already exists"
                    )));
                }
                vec![E::MessagePosted {
                    message_id: message_id.clone(),
                    author: caller.principal.clone(),
                    body: body.clone(),
                }]
            }
            C::EditMessage { message_id, body } => {
                check_text("message body", body, MAX_BODY_CHARS)?;
                self.own_message(caller, message_id, "edit")?;
                vec![E::MessageEdited {
                    message_id: message_id.clone(),
                    body: body.clone(),
                }]
            }
            C::DeleteMessage { message_id } => {
                self.own_message(caller, message_id, "delete")?;
                vec![E::MessageDeleted {
                    message_id: message_id.clone(),
                }]
            }
            C::Archive => {
                self.require_owner(caller, "archive the room")?;
                vec![E::Archived]
            }
        })
    }

    fn apply(&mut self, event: &RoomEvent) {
        match event {
            RoomEvent::Created { name, owner } => {
                self.created = true;
                self.name = name.clone();
                self.owner = owner.clone();
                self.members.insert(owner.clone());
            }
            RoomEvent::Renamed { name } => self.name = name.clone(),
            RoomEvent::MemberAdded { user_id } => {
                self.members.insert(user_id.clone());
            }
            RoomEvent::MemberRemoved { user_id } => {
                self.members.remove(user_id);
            }
            RoomEvent::MessagePosted {
                message_id, author, ..
            } => {
                self.messages.insert(
                    message_id.clone(),
                    MessageInfo {
                        author: author.clone(),
                        deleted: false,
                    },
                );
            }
            RoomEvent::MessageEdited { .. } => {}
            RoomEvent::MessageDeleted { message_id } => {
                if let Some(m) = self.messages.get_mut(message_id) {
                    m.deleted = true;
                }
            }
            RoomEvent::Archived => self.archived = true,
        }
    }

    fn encode(event: &RoomEvent) -> EncodedEvent {
        crate::codec::encode(event)
    }

    fn decode(
        event_type: &str,
        schema_version: u32,
        payload: &[u8],
    ) -> Result<RoomEvent, DecodeError> {
        crate::codec::decode(event_type, schema_version, payload)
    }
}

#[cfg(test)]
mod tests;
