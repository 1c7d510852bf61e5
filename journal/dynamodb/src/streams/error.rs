//! What reading the stream can fail with.

use crate::DynamoDbError;

/// Why [`StreamsReader::read`](super::StreamsReader::read) returned no batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamsError {
    /// The checkpoint of a shard is older than the stream's 24-hour retention: the records
    /// after it were trimmed before they were read, and the feed cannot give them back. Reading
    /// on from the oldest record still there would skip them silently, so the reader stops. The
    /// read models fed from this stream must be rebuilt from the journal (which keeps every
    /// event), and the feed restarted from fresh checkpoints.
    #[error(
        "shard {shard_id} of stream {stream_arn}: checkpoint {checkpoint} is older than the \
         stream's 24-hour retention and the records after it are gone from the stream; rebuild \
         the read model from the journal (`kiroku rebuild PROJECTION`), then restart the feed \
         from empty checkpoints"
    )]
    CheckpointTrimmed {
        stream_arn: String,
        shard_id: String,
        /// The sequence number of the last record handed out in that shard.
        checkpoint: String,
    },
    /// A shard the reader owes from its first record — a child of a shard it read to the end —
    /// lost records before the reader got to it (the feed stood still for longer than the
    /// retention after the parent ended): the shard's first records were trimmed, or the stream
    /// no longer lists the shard at all. Reading it from the oldest record left, or reading its
    /// children, would skip them silently, so the reader stops. Same remedy as
    /// [`CheckpointTrimmed`](Self::CheckpointTrimmed).
    #[error(
        "shard {shard_id} of stream {stream_arn}: checkpoint none (the shard is owed from its \
         first record: its parent was read to its end), but {}, trimmed (older than the stream's \
         24-hour retention) before they were read; rebuild the read model from the \
         journal (`kiroku rebuild PROJECTION`), then restart the feed from empty checkpoints",
        lost(.starting_sequence_number, .oldest_left)
    )]
    ShardStartTrimmed {
        stream_arn: String,
        shard_id: String,
        /// The shard's `StartingSequenceNumber`; `None` when the stream no longer lists it.
        starting_sequence_number: Option<String>,
        /// The oldest record the shard still has; `None` when it has none.
        oldest_left: Option<String>,
    },
    /// DynamoDB failed or refused a request.
    #[error(transparent)]
    DynamoDb(#[from] DynamoDbError),
}

/// What [`StreamsError::ShardStartTrimmed`] lost, in words.
fn lost(start: &Option<String>, oldest_left: &Option<String>) -> String {
    match (start, oldest_left) {
        (None, None) => {
            "the stream no longer lists the shard, so all of its records are gone".into()
        }
        (Some(start), Some(oldest)) => {
            format!(
                "its records from {start} up to, not including, {oldest} (the oldest left) are gone"
            )
        }
        (Some(start), None) => format!("its records from {start} on are gone"),
        (None, Some(oldest)) => format!("its records before {oldest} are gone"),
    }
}
