//! The DynamoDB journal: [`DynamoDbJournal`] implements [`kiroku_journal::Journal`] on DynamoDB
//! (or any DynamoDB-compatible server), and [`StreamsReader`] reads the events table's DynamoDB
//! Stream, the scale-mode change feed. See `DESIGN.md` next to this crate for the key design.
//!
//! ```text
//! let config = DynamoDbConfig::from_url("dynamodb://?endpoint=http://127.0.0.1:8000&prefix=kiroku_")?;
//! let journal = DynamoDbJournal::connect(config).await?;
//! journal.init_tables().await?;            // `kiroku journal init`; idempotent
//! ```

mod append;
pub mod bench;
mod client;
mod config;
mod error;
mod items;
mod journal;
mod retry;
mod streams;
mod tables;

pub use append::MAX_EVENTS_PER_APPEND;
pub use client::{RequestCounter, RequestCounts};
pub use config::{ConfigError, DynamoDbConfig, RetryPolicy};
pub use error::DynamoDbError;
pub use journal::DynamoDbJournal;
pub use streams::{
    MAX_EMPTY_PAGES, ShardCheckpoint, StreamBatch, StreamCheckpoints, StreamsError, StreamsReader,
};
pub use tables::InitReport;
