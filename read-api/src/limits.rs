//! Caps on what callers hold open on the read side: consistency waits and live streams, each
//! counted per principal and in total. A slot is a [`Permit`]; dropping it gives the slot back,
//! whichever way the wait or stream ended (answered, timed out, failed, client gone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// How many of one kind of slot may be held at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// By all callers together.
    pub total: usize,
    /// By any one principal.
    pub per_principal: usize,
}

/// The read API's caps on long-lived requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Queries waiting for a consistency token (each wakes on commits or polls the store).
    pub waits: Caps,
    /// Live streams open (gRPC `WatchRoom` and Server-Sent Events together).
    pub streams: Caps,
}

pub const DEFAULT_MAX_WAITS: usize = 1024;
pub const DEFAULT_MAX_WAITS_PER_PRINCIPAL: usize = 256;
pub const DEFAULT_MAX_STREAMS: usize = 1024;
pub const DEFAULT_MAX_STREAMS_PER_PRINCIPAL: usize = 256;

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            waits: Caps {
                total: DEFAULT_MAX_WAITS,
                per_principal: DEFAULT_MAX_WAITS_PER_PRINCIPAL,
            },
            streams: Caps {
                total: DEFAULT_MAX_STREAMS,
                per_principal: DEFAULT_MAX_STREAMS_PER_PRINCIPAL,
            },
        }
    }
}

/// Why a slot was refused; the text is meant for the person who sent the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "too many {what}: principal {principal:?} already has {limit} open (the limit per \
         principal); retry once one of them has ended"
    )]
    Principal {
        what: &'static str,
        principal: String,
        limit: usize,
    },
    #[error("too many {what}: the server already serves {limit} (its limit); retry in a moment")]
    Total { what: &'static str, limit: usize },
}

/// Counts slots per principal and in total. Clones share the counts.
#[derive(Clone)]
pub struct Limiter {
    what: &'static str,
    caps: Caps,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_principal: HashMap<String, usize>,
}

/// One held slot; dropping it releases the slot.
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct Permit {
    counts: Arc<Mutex<Counts>>,
    principal: String,
}

impl Limiter {
    /// `what` names the slots in refusals ("live streams").
    pub fn new(what: &'static str, caps: Caps) -> Self {
        Self {
            what,
            caps,
            counts: Arc::default(),
        }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Takes a slot for `principal`, or says which cap is reached. The per-principal cap is
    /// checked first: a caller over its own share hears about its own share.
    pub fn try_acquire(&self, principal: &str) -> Result<Permit, Refused> {
        let mut counts = lock(&self.counts);
        let held = counts.by_principal.get(principal).copied().unwrap_or(0);
        if held >= self.caps.per_principal {
            return Err(Refused::Principal {
                what: self.what,
                principal: principal.to_owned(),
                limit: self.caps.per_principal,
            });
        }
        if counts.total >= self.caps.total {
            return Err(Refused::Total {
                what: self.what,
                limit: self.caps.total,
            });
        }
        counts.total += 1;
        *counts.by_principal.entry(principal.to_owned()).or_default() += 1;
        Ok(Permit {
            counts: self.counts.clone(),
            principal: principal.to_owned(),
        })
    }

    /// Slots held by everybody.
    pub fn in_use(&self) -> usize {
        lock(&self.counts).total
    }

    /// Slots held by `principal`.
    pub fn in_use_by(&self, principal: &str) -> usize {
        lock(&self.counts)
            .by_principal
            .get(principal)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.total -= 1;
        if let Some(held) = counts.by_principal.get_mut(&self.principal) {
            *held -= 1;
            if *held == 0 {
                // Principals come and go: keep the map as small as what is held.
                counts.by_principal.remove(&self.principal);
            }
        }
    }
}

/// The counts stay consistent whatever panicked while holding the lock (nothing here can).
fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(total: usize, per_principal: usize) -> Limiter {
        Limiter::new(
            "live streams",
            Caps {
                total,
                per_principal,
            },
        )
    }

    #[test]
    fn a_principal_gets_at_most_its_share_and_everybody_at_most_the_total() {
        let l = limiter(3, 2);
        let a1 = l.try_acquire("ann").unwrap();
        let _a2 = l.try_acquire("ann").unwrap();
        let refused = l.try_acquire("ann").err().unwrap();
        assert_eq!(
            refused.to_string(),
            "too many live streams: principal \"ann\" already has 2 open (the limit per \
             principal); retry once one of them has ended"
        );
        let _b1 = l.try_acquire("bob").unwrap();
        let refused = l.try_acquire("carol").err().unwrap();
        assert_eq!(
            refused,
            Refused::Total {
                what: "live streams",
                limit: 3
            }
        );
        assert!(
            refused.to_string().contains("retry in a moment"),
            "{refused}"
        );
        assert_eq!((l.in_use(), l.in_use_by("ann")), (3, 2));
        // Dropping a permit gives its slot back to everybody.
        drop(a1);
        assert_eq!((l.in_use(), l.in_use_by("ann")), (2, 1));
        let _c1 = l.try_acquire("carol").unwrap();
    }

    #[test]
    fn released_slots_leave_no_trace_and_clones_share_the_counts() {
        let l = limiter(10, 10);
        let clone = l.clone();
        let permits: Vec<_> = (0..10)
            .map(|i| clone.try_acquire(&format!("p{i}")).unwrap())
            .collect();
        assert!(l.try_acquire("p0").is_err());
        drop(permits);
        assert_eq!(l.in_use(), 0);
        assert!(lock(&l.counts).by_principal.is_empty());
        let _again = l.try_acquire("p0").unwrap();
    }
}
