//! The read side's writer: projects journal events into read models.
//!
//! * [`Feed`] yields envelopes in the journal's global order from a resumable position;
//!   [`JournalFeed`] tails the embedded journal, woken by its writer (no busy poll).
//! * [`Projection`] turns one event into view [`Change`]s; [`RoomsProjection`] is the reference
//!   domain's (room summary, room messages, rooms of a member).
//! * [`ReadStore`] keeps the views, the per-aggregate applied sequence numbers, the checkpoint and
//!   the dead letters; [`SqliteReadStore`] (embedded) and [`PostgresReadStore`] (scale) implement
//!   it and pass the same suite (`read_store_suite!`).
//! * [`Updater`] runs a projection over a feed in batches: each batch's view changes, applied
//!   sequence numbers and checkpoint commit in one store transaction, so a kill at any point
//!   leaves the views as if each event were applied exactly once. It never stops on its own:
//!   transient faults are retried, other failures restart it; [`UpdaterHealth`] says which.
//! * [`rebuild`] replays the journal into a fresh version of a projection's tables while the
//!   current version serves, then switches atomically.

pub mod dead_letters;
mod feed;
mod health;
mod projection;
pub mod rebuild;
mod store;
mod updater;
mod waiter;

pub use feed::{Feed, JournalFeed};
pub use health::{UpdaterFailure, UpdaterHealth};
pub use projection::{Change, PROJECTIONS, Projection, ROOMS, RoomsProjection};
pub use store::{
    Batch, Checkpoint, CommitOutcome, Cursor, DeadLetter, MessagePage, MessageView, Poison,
    PostgresReadStore, ProjectedEvent, ProjectionState, ReadStore, RoomSummary, SqliteReadStore,
    StoreError, ViewsDump, open_store, open_store_with_wal_ceiling,
};
pub use updater::{Changed, Progress, Updater, UpdaterConfig, UpdaterError};
pub use waiter::{Consistency, ConsistencyWaiter};

#[doc(hidden)]
pub mod suite;
