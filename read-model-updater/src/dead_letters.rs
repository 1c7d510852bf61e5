//! Operator actions on parked events: retry them (after a fix) or skip one.

use kiroku_journal::StreamId;

use crate::Projection;
use crate::store::{Poison, ProjectedEvent, ReadStore, StoreError};

/// What a retry did for one aggregate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Parked events now applied.
    pub applied: usize,
    /// Events still parked (the first of them failed again, unless `skipped` emptied them all).
    pub still_parked: usize,
    pub error: Option<String>,
}

/// Projects the parked events of `stream` again, in order, and applies those that now succeed;
/// stops at the first that still fails (it stays parked with the new error).
pub async fn retry(
    store: &dyn ReadStore,
    projection: &dyn Projection,
    stream: &StreamId,
) -> Result<Resolution, StoreError> {
    resolve(store, projection, stream, None).await
}

/// Gives up on parked event `sequence` of `stream` (it is recorded as applied without changing
/// any view), then retries the events parked behind it.
pub async fn skip(
    store: &dyn ReadStore,
    projection: &dyn Projection,
    stream: &StreamId,
    sequence: u64,
) -> Result<Resolution, StoreError> {
    resolve(store, projection, stream, Some(sequence)).await
}

async fn resolve(
    store: &dyn ReadStore,
    projection: &dyn Projection,
    stream: &StreamId,
    skip: Option<u64>,
) -> Result<Resolution, StoreError> {
    let parked = store.parked(projection.name(), stream).await?;
    if parked.is_empty() {
        return Err(StoreError::Conflict(format!(
            "{stream} has no parked events in {}",
            projection.name()
        )));
    }
    if let Some(seq) = skip
        && parked[0].envelope.sequence != seq
    {
        return Err(StoreError::Conflict(format!(
            "only the oldest parked event of {stream} (#{}) can be skipped, not #{seq}",
            parked[0].envelope.sequence
        )));
    }
    let total = parked.len();
    let mut events = Vec::with_capacity(total);
    let mut report = Resolution::default();
    for letter in parked {
        let skipping = skip == Some(letter.envelope.sequence);
        let result = if skipping {
            Ok(Vec::new())
        } else {
            projection
                .changes(&letter.envelope)
                .map_err(|error| Poison { error, attempts: 1 })
        };
        let failed = result.is_err();
        if let Err(p) = &result {
            report.error = Some(p.error.clone());
        } else {
            report.applied += 1;
        }
        events.push(ProjectedEvent {
            envelope: letter.envelope,
            result,
        });
        if failed {
            break;
        }
    }
    report.still_parked = total - report.applied;
    store.resolve(projection.name(), stream, events).await?;
    Ok(report)
}
