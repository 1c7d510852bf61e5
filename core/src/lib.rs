//! The core of kiroku: what an aggregate is, how it rejects a command, and how its state is
//! snapshotted. This crate does no IO and depends on no runtime, transport or storage crate; the
//! write side (`kiroku-write-api`) drives these types, the journal stores what they produce.

mod aggregate;
pub mod ids;
mod snapshot;

pub use aggregate::{Aggregate, Caller, DecodeError, EncodedEvent, Rejection, RejectionKind};
pub use snapshot::{BincodeSnapshotCodec, SnapshotCodec, SnapshotDecodeError};
