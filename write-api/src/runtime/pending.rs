//! Commands sent with WAIT_MODE_ACCEPTED that are not decided yet.
//!
//! Tracked in memory only: once decided, a command's result lives in the journal (decisions) or
//! is gone (failures to decide — the caller resends the same id). A process crash loses the
//! tracking, never an acknowledged result: `ACCEPTED` promises admission, not durability.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::{CommandError, Executed};

type Key = (String, String);

#[derive(Debug, Clone, PartialEq)]
pub enum CommandState {
    Pending,
    Done(Result<Executed, CommandError>),
}

#[derive(Clone, Default)]
pub struct Pending {
    inner: Arc<Mutex<HashMap<Key, watch::Receiver<CommandState>>>>,
}

pub struct Tracker {
    key: Key,
    tx: watch::Sender<CommandState>,
    pending: Pending,
}

impl Pending {
    /// Starts tracking; `None` if the command is already being tracked.
    pub(super) fn start(&self, key: Key) -> Option<Tracker> {
        let mut map = self.inner.lock();
        if map.contains_key(&key) {
            return None;
        }
        let (tx, rx) = watch::channel(CommandState::Pending);
        map.insert(key.clone(), rx);
        Some(Tracker {
            key,
            tx,
            pending: self.clone(),
        })
    }

    /// Follows an undecided command of `principal`; `None` if it is not in flight.
    pub fn watch(
        &self,
        principal: &str,
        command_id: &str,
    ) -> Option<watch::Receiver<CommandState>> {
        self.inner
            .lock()
            .get(&(principal.to_owned(), command_id.to_owned()))
            .cloned()
    }
}

impl Tracker {
    pub(super) fn finish(self, result: Result<Executed, CommandError>) {
        // Remove first: a reader that misses the map then finds the decision in the journal.
        self.pending.inner.lock().remove(&self.key);
        self.tx.send_replace(CommandState::Done(result));
    }
}
