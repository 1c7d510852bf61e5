//! The updater's health: whether it can commit, and what went wrong last. Published beside its
//! progress; the read API turns it into readiness, projection status and metrics.
//!
//! Failures are described here in words safe to show any client (never a backend's text: SQL,
//! hosts, account ids); the detail is in the log under the failure's `error_id`.

use std::time::Duration;

use kiroku_journal::JournalError;
use serde::Serialize;

use crate::store::{StoreError, now_ms};
use crate::updater::UpdaterError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdaterHealth {
    /// False from a failed attempt until the next one that succeeds.
    pub committing: bool,
    /// Since when it has not been able to commit (ms since the epoch).
    pub failing_since_ms: Option<i64>,
    /// Failed attempts since the last one that succeeded.
    pub consecutive_failures: u32,
    /// Transient faults retried since the updater started (connection lost, lost races, a busy
    /// store, ...).
    pub transient_faults: u64,
    /// Restarts (state reloaded from the store) after a failure that was not transient, or a
    /// panic, since the updater started.
    pub restarts: u64,
    /// The latest failure, kept after recovery.
    pub last_failure: Option<UpdaterFailure>,
}

impl Default for UpdaterHealth {
    fn default() -> Self {
        Self {
            committing: true,
            failing_since_ms: None,
            consecutive_failures: 0,
            transient_faults: 0,
            restarts: 0,
            last_failure: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdaterFailure {
    pub at_ms: i64,
    pub transient: bool,
    /// What failed, safe to show: e.g. "the read store is unavailable".
    pub summary: String,
    /// The id the failure's detail was logged under.
    pub error_id: String,
}

impl UpdaterHealth {
    /// Records a failed attempt; returns the new failure.
    pub(crate) fn failed(&mut self, transient: bool, summary: &str) -> UpdaterFailure {
        let at_ms = now_ms();
        let failure = UpdaterFailure {
            at_ms,
            transient,
            summary: summary.to_owned(),
            error_id: format!("{:016x}", fastrand::u64(..)),
        };
        self.committing = false;
        self.failing_since_ms.get_or_insert(at_ms);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if transient {
            self.transient_faults += 1;
        } else {
            self.restarts += 1;
        }
        self.last_failure = Some(failure.clone());
        failure
    }

    /// Records an attempt that succeeded. Returns whether that ended a failure.
    pub(crate) fn succeeded(&mut self) -> bool {
        let recovered = !self.committing;
        self.committing = true;
        self.failing_since_ms = None;
        self.consecutive_failures = 0;
        recovered
    }
}

impl UpdaterError {
    /// What failed, in words safe to show any client.
    pub fn summary(&self) -> &'static str {
        match self {
            UpdaterError::Store(StoreError::Unavailable(_)) => "the read store is unavailable",
            UpdaterError::Store(StoreError::Gap { .. }) => {
                "the read store found a gap in an aggregate's events that could not be repaired"
            }
            UpdaterError::Store(StoreError::UnknownProjection(_)) => {
                "the read store does not know the projection"
            }
            UpdaterError::Store(StoreError::Conflict(_)) => {
                "the read store refused a change made concurrently"
            }
            UpdaterError::Store(StoreError::Broken(_)) => {
                "the read store is broken: a table is missing or of another shape, or it cannot be written"
            }
            UpdaterError::Store(StoreError::Storage(_)) => "the read store refused the work",
            UpdaterError::Journal(JournalError::Unavailable(_)) => "the journal is unavailable",
            UpdaterError::Journal(_) => "reading the journal failed",
        }
    }

    /// Whether the same work, tried again, can succeed (the updater then retries it without
    /// restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            UpdaterError::Store(e) => e.is_transient(),
            UpdaterError::Journal(e) => matches!(e, JournalError::Unavailable(_)),
        }
    }
}

/// The pause before try `attempt` (1, 2, …): `base` doubling each time, at most `cap`, with
/// jitter (50–100 %) so that many updaters do not retry in step.
pub(crate) fn backoff(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1 << attempt.clamp(1, 20).saturating_sub(1));
    exp.min(cap).mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_stops_committing_until_the_next_success_and_counts_by_kind() {
        let mut h = UpdaterHealth::default();
        assert!(h.committing);
        let first = h.failed(true, "the read store is unavailable");
        let since = h.failing_since_ms;
        assert!(!h.committing && since.is_some());
        h.failed(false, "the read store refused the work");
        assert_eq!(h.failing_since_ms, since, "since the first failure");
        assert_eq!(
            (h.consecutive_failures, h.transient_faults, h.restarts),
            (2, 1, 1)
        );
        assert_ne!(h.last_failure.as_ref().unwrap().error_id, first.error_id);
        assert!(h.succeeded());
        assert!(h.committing && h.failing_since_ms.is_none());
        assert_eq!(h.consecutive_failures, 0);
        assert!(!h.succeeded(), "nothing to recover from");
        assert!(h.last_failure.is_some(), "the last failure is kept");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let base = Duration::from_millis(10);
        let cap = Duration::from_secs(5);
        for attempt in 1..40 {
            let full = base.saturating_mul(1 << (attempt.min(20) - 1)).min(cap);
            let pause = backoff(base, attempt, cap);
            assert!(pause <= full && pause >= full / 2, "{attempt}: {pause:?}");
        }
        assert!(backoff(base, 0, cap) <= base);
    }

    #[test]
    fn summaries_never_carry_the_backends_text() {
        let e = UpdaterError::Store(StoreError::Storage(
            "ERROR: relation \"rooms_v1\" does not exist".into(),
        ));
        assert!(!e.summary().contains("rooms_v1"));
        assert!(!e.is_transient());
        let e = UpdaterError::Store(StoreError::Unavailable("FATAL: terminating".into()));
        assert!(e.is_transient() && !e.summary().contains("FATAL"));
    }
}
