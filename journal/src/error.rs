use crate::StreamId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// Somebody else appended first: the stream is at `actual`, not `expected`. Nothing was written.
    #[error("stream {stream} is at version {actual}, expected {expected}")]
    Conflict {
        stream: StreamId,
        expected: u64,
        actual: u64,
    },
    /// An event or batch exceeds what the backend stores in one item. Nothing was written.
    #[error("{what} is {size} bytes, the limit is {limit} bytes")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    /// The backend does not offer this operation (e.g. a global order).
    #[error("{0} is not supported by this journal")]
    Unsupported(&'static str),
    /// A transient failure (timeout, throttling, connection lost) after retries. The write may or
    /// may not have happened: re-read before deciding again.
    #[error("journal unavailable: {0}")]
    Unavailable(String),
    /// A permanent backend failure (corrupt data, a full disk).
    #[error("journal storage error: {0}")]
    Storage(String),
    /// The journal was shut down.
    #[error("journal is closed")]
    Closed,
}
