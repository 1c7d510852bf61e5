//! The reference domain: chat rooms.
//!
//! A room is created with a name by its owner, who is its first member. Members post messages;
//! authors edit and delete their own; the owner renames, removes members and archives. An
//! archived room rejects everything. Names are 1–100 characters, bodies 1–4000.

mod codec;
mod room;

pub use room::{MAX_BODY_CHARS, MAX_ID_CHARS, MAX_NAME_CHARS, Room, RoomCommand, RoomEvent};
