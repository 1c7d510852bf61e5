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
    /// DynamoDB failed or refused a request.
    #[error(transparent)]
    DynamoDb(#[from] DynamoDbError),
}
