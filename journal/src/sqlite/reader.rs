use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::Connection;

use super::{schema, storage};
use crate::JournalError;

/// Read-only connections, reused; reads run on tokio's blocking pool, at most [`MAX_READERS`] at
/// once (without a bound, a burst of reads spawns a thread and a connection — with its own page
/// cache — per read).
#[derive(Clone)]
pub(super) struct ReaderPool {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<tokio::sync::Semaphore>,
}

const MAX_READERS: usize = 8;

impl ReaderPool {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path: Arc::new(path),
            idle: Arc::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
        }
    }

    pub async fn run<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.clone();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| JournalError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match pool.idle.lock().pop() {
                Some(c) => c,
                None => schema::open_reader(&pool.path).map_err(storage)?,
            };
            let result = f(&conn).map_err(storage);
            let mut idle = pool.idle.lock();
            if idle.len() < MAX_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| JournalError::Storage(format!("read task failed: {e}")))?
    }
}
