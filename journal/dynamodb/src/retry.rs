//! Bounded, jittered retries.
//!
//! Every request runs through [`retrying`]: at most `max_attempts` attempts, full-jitter
//! exponential backoff between them (`base · 2^n`, capped, a uniformly random fraction of it), and
//! no new attempt once the deadline would pass. The SDK's own retries are off so that an
//! operation knows whether an earlier attempt may have been applied (a lost response): the append
//! uses that to recognise its own write.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::RetryPolicy;
use crate::error::{DynamoDbError, Failure};

/// What the current attempt knows about the earlier ones.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Attempt {
    pub number: u32,
    /// An earlier attempt failed in a way that may have left its write applied.
    pub earlier_possibly_applied: bool,
}

pub(crate) async fn retrying<T, F, Fut>(
    policy: &RetryPolicy,
    operation: &'static str,
    mut attempt: F,
) -> Result<T, DynamoDbError>
where
    F: FnMut(Attempt) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let started = Instant::now();
    let mut state = Attempt::default();
    loop {
        state.number += 1;
        let (reason, possibly_applied) = match attempt(state).await {
            Ok(value) => return Ok(value),
            Err(Failure::Permanent(e)) => return Err(e),
            Err(Failure::Transient {
                reason,
                possibly_applied,
            }) => (reason, possibly_applied),
        };
        state.earlier_possibly_applied |= possibly_applied;
        let delay = backoff(policy, state.number);
        let out_of_time = started.elapsed() + delay >= policy.deadline;
        if state.number >= policy.max_attempts || out_of_time {
            tracing::warn!(
                operation,
                attempts = state.number,
                elapsed_ms = started.elapsed().as_millis() as u64,
                reason = %reason,
                "dynamodb request gave up"
            );
            return Err(DynamoDbError::Unavailable {
                operation,
                attempts: state.number,
                elapsed_ms: started.elapsed().as_millis(),
                last: reason,
            });
        }
        tracing::debug!(
            operation,
            attempt = state.number,
            delay_ms = delay.as_millis() as u64,
            reason = %reason,
            "dynamodb request failed, retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Full jitter: a uniformly random delay in `[0, min(max, base · 2^(attempt-1))]`.
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(policy.max_delay);
    cap.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_stays_under_the_cap() {
        let p = policy(5);
        for attempt in 1..40 {
            assert!(backoff(&p, attempt) <= p.max_delay);
        }
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_with_the_last_reason() {
        let calls = AtomicU32::new(0);
        let err = retrying(&policy(3), "Query", |_| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Failure::Transient {
                reason: "boom".into(),
                possibly_applied: false,
            })
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(
            matches!(err, DynamoDbError::Unavailable { attempts: 3, ref last, .. } if last == "boom")
        );
    }

    #[tokio::test]
    async fn reports_that_an_earlier_attempt_may_have_been_applied() {
        let seen = retrying(&policy(3), "TransactWriteItems", |a| async move {
            if a.number == 1 {
                Err(Failure::Transient {
                    reason: "response lost".into(),
                    possibly_applied: true,
                })
            } else {
                Ok(a.earlier_possibly_applied)
            }
        })
        .await
        .unwrap();
        assert!(seen);
    }
}
