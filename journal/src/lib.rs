//! The journal: kiroku's append-only store of domain events.
//!
//! * [`Journal`] is the port every backend implements; [`conformance`] is the test suite every
//!   backend must pass (`journal_conformance_suite!`).
//! * [`SqliteJournal`] is the embedded default: one SQLite file, WAL, fsync before an append is
//!   acknowledged, group commit so many aggregates share one fsync.
//!
//! Besides events the journal keeps the decided result of every command (so a resent command id
//! returns the original result, also after a restart) and snapshots of aggregate state.

pub mod conformance;
mod envelope;
mod error;
mod port;
mod sqlite;

pub use envelope::{
    AppendOutcome, AppendRequest, CommandOutcome, CommandRecord, Envelope, EventMetadata, NewEvent,
    SnapshotRecord, StreamId,
};
pub use error::JournalError;
pub use port::{Journal, read_whole_stream};
pub use sqlite::{SqliteJournal, SqliteJournalOptions, wal};
