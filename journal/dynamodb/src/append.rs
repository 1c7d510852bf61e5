//! The append: one TransactWriteItems request per command.
//!
//! The transaction holds, in this order:
//!
//! 0. the command record, `attribute_not_exists(pk)` — a decided command id cancels the whole
//!    transaction, and because it is item 0 its reason is read first (duplicate before conflict);
//! 1. the stream head (sequence 0 of the stream's partition): `SET head = :new` conditioned on
//!    `head = :expected` (or no head yet when expecting 0); a `ConditionCheck` when there are no
//!    events;
//! 2. one `Put` per event with `attribute_not_exists(pk)`.
//!
//! Items 0 and 1 ask for `ALL_OLD` on a failed condition, so a duplicate or a conflict usually
//! needs no extra read. The `ClientRequestToken` is a hash of everything the transaction writes:
//! DynamoDB answers a retry after a lost response with success instead of writing twice, and a
//! command decided again with other contents is a new request that meets the conditions. Servers
//! without token support (moto) cancel the retry on item 0; the append then recognises the stored
//! record as its own when an earlier attempt may have been applied.
//!
//! A rejection is the same transaction without events (the head a `ConditionCheck`): it is
//! recorded only while the stream is still at the version it was decided on.

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    CancellationReason, ConditionCheck, Put, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update,
};
use kiroku_journal::{
    AppendOutcome, AppendRequest, CommandOutcome, CommandRecord, EventMetadata, JournalError,
};

use crate::DynamoDbJournal;
use crate::error::{DynamoDbError, Failure, classify};
use crate::items::{
    self, HEAD, Item, MAX_ITEM_BYTES, MAX_TRANSACTION_BYTES, MAX_TRANSACTION_ITEMS,
};
use crate::retry::retrying;

/// Events per append: a transaction's 100 items minus the command record and the stream head.
pub const MAX_EVENTS_PER_APPEND: usize = MAX_TRANSACTION_ITEMS - 2;

/// What the transaction decided.
enum Decision {
    Written,
    /// Item 0's condition failed: the command id was decided before (the old record if returned).
    CommandDecided(Option<Item>),
    /// The head's or an event's condition failed (the old head if returned).
    VersionConflict(Option<Item>),
    /// DynamoDB saw this token with other contents. The token covers every byte of the
    /// transaction, so this is not a resend of ours: whether anything was written is unknown.
    TokenReused,
}

pub(crate) async fn append(
    journal: &DynamoDbJournal,
    req: AppendRequest,
) -> Result<AppendOutcome, JournalError> {
    let record = record_of(&req);
    decide(journal, req, record).await
}

/// A rejection is the same transaction without events: the command record, conditioned on the
/// stream head still being the version the rejection was decided on.
pub(crate) async fn record_rejection(
    journal: &DynamoDbJournal,
    record: CommandRecord,
    decided_at: u64,
) -> Result<CommandRecord, JournalError> {
    let req = AppendRequest {
        stream: record.stream.clone(),
        expected_sequence: decided_at,
        events: Vec::new(),
        metadata: EventMetadata {
            command_id: record.command_id.clone(),
            principal: record.principal.clone(),
            timestamp_ms: record.recorded_at_ms,
            ..EventMetadata::default()
        },
    };
    match decide(journal, req, record).await? {
        AppendOutcome::Appended(r) | AppendOutcome::Duplicate(r) => Ok(r),
    }
}

/// Writes `record` (and the request's events) in one transaction, or finds out why not.
async fn decide(
    journal: &DynamoDbJournal,
    req: AppendRequest,
    record: CommandRecord,
) -> Result<AppendOutcome, JournalError> {
    let items = transaction_items(journal, &req, &record)?;
    let token = idempotency_token(&req, &record);
    let operation = "TransactWriteItems";
    let (decision, earlier_possibly_applied) = retrying(journal.retry(), operation, |attempt| {
        let items = items.clone();
        let token = token.clone();
        async move {
            let sent = journal
                .db()
                .transact_write_items()
                .set_transact_items(Some(items))
                .client_request_token(token)
                .send()
                .await;
            let decision = match sent {
                Ok(_) => Decision::Written,
                Err(err) => match err.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
                        cancelled(e.cancellation_reasons())?
                    }
                    Some(TransactWriteItemsError::IdempotentParameterMismatchException(_)) => {
                        Decision::TokenReused
                    }
                    _ => return Err(classify(operation, &err)),
                },
            };
            Ok((decision, attempt.earlier_possibly_applied))
        }
    })
    .await?;
    match decision {
        Decision::Written => {
            tracing::debug!(stream = %req.stream, command_id = %req.metadata.command_id, events = req.events.len(), "appended");
            Ok(AppendOutcome::Appended(record))
        }
        Decision::TokenReused => {
            let meta = &req.metadata;
            match journal
                .read_command_record(&meta.principal, &meta.command_id)
                .await?
            {
                Some(stored) => Ok(AppendOutcome::Duplicate(stored)),
                None => {
                    tracing::warn!(stream = %req.stream, command_id = %meta.command_id, "dynamodb refused a reused idempotency token; the command has no record");
                    Err(JournalError::Unavailable(format!(
                        "the outcome of command {} is unknown; resending it is safe",
                        meta.command_id
                    )))
                }
            }
        }
        Decision::CommandDecided(old) => {
            let meta = &req.metadata;
            let stored = match old {
                Some(item) => items::command_record(&journal.config().commands_table(), &item)?,
                None => journal
                    .read_command_record(&meta.principal, &meta.command_id)
                    .await?
                    .ok_or_else(|| {
                        JournalError::Storage(format!(
                            "the record of command {} vanished after its condition failed",
                            meta.command_id
                        ))
                    })?,
            };
            if earlier_possibly_applied && stored == record {
                // Our own earlier attempt was applied and only its response was lost.
                tracing::info!(stream = %req.stream, command_id = %meta.command_id, "append recognised as our own after a lost response");
                Ok(AppendOutcome::Appended(stored))
            } else {
                Ok(AppendOutcome::Duplicate(stored))
            }
        }
        Decision::VersionConflict(old) => {
            let table = journal.config().events_table();
            let actual = match old {
                Some(item) if item.contains_key(HEAD) => items::head(&table, &item)?,
                _ => journal.read_highest_sequence(&req.stream).await?,
            };
            Err(JournalError::Conflict {
                stream: req.stream,
                expected: req.expected_sequence,
                actual,
            })
        }
    }
}

/// Reads the cancellation reasons: item 0 is the command record, item 1 the stream head.
fn cancelled(reasons: &[CancellationReason]) -> Result<Decision, Failure> {
    let code = |r: &CancellationReason| r.code().unwrap_or("None").to_owned();
    if let Some(first) = reasons
        .first()
        .filter(|r| code(r) == "ConditionalCheckFailed")
    {
        return Ok(Decision::CommandDecided(first.item().cloned()));
    }
    if reasons.iter().any(|r| code(r) == "ConditionalCheckFailed") {
        let head = reasons.get(1).and_then(|r| r.item().cloned());
        return Ok(Decision::VersionConflict(head));
    }
    let codes: Vec<String> = reasons.iter().map(code).collect();
    let transient = [
        "TransactionConflict",
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
    ];
    if codes.iter().any(|c| transient.contains(&c.as_str())) {
        Err(Failure::Transient {
            reason: format!("transaction cancelled: {codes:?}"),
            possibly_applied: false,
        })
    } else {
        Err(Failure::Permanent(DynamoDbError::Service {
            operation: "TransactWriteItems",
            code: "TransactionCanceledException".into(),
            message: format!("cancellation reasons {codes:?}"),
        }))
    }
}

/// The record this append writes when it succeeds.
fn record_of(req: &AppendRequest) -> CommandRecord {
    let count = req.events.len() as u64;
    let version = req.expected_sequence + count;
    let (first, last) = if count == 0 {
        (0, 0)
    } else {
        (req.expected_sequence + 1, version)
    };
    CommandRecord {
        principal: req.metadata.principal.clone(),
        command_id: req.metadata.command_id.clone(),
        stream: req.stream.clone(),
        outcome: CommandOutcome::Succeeded {
            version,
            first_sequence: first,
            last_sequence: last,
        },
        recorded_at_ms: req.metadata.timestamp_ms,
    }
}

/// The token of one transaction (at most 36 characters): a hash of everything it writes. A retry
/// of the same request is recognised; a command decided again (after a reload, with another
/// timestamp or other events) is a new request and meets the conditions, never
/// `IdempotentParameterMismatch`.
fn idempotency_token(req: &AppendRequest, record: &CommandRecord) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b69726f_6b75_4a6f_8e72_6e616c000001);
    let meta = &req.metadata;
    let mut name = Vec::with_capacity(256);
    for part in [
        meta.principal.as_bytes(),
        meta.command_id.as_bytes(),
        items::stream_key(&req.stream).as_bytes(),
        &req.expected_sequence.to_be_bytes(),
        &meta.timestamp_ms.to_be_bytes(),
        meta.correlation_id.as_bytes(),
        meta.causation_id.as_bytes(),
        format!("{:?}", record.outcome).as_bytes(),
    ] {
        name.extend_from_slice(&(part.len() as u64).to_be_bytes());
        name.extend_from_slice(part);
    }
    for event in &req.events {
        for part in [
            event.event_type.as_bytes(),
            &event.schema_version.to_be_bytes(),
            &event.payload,
        ] {
            name.extend_from_slice(&(part.len() as u64).to_be_bytes());
            name.extend_from_slice(part);
        }
    }
    uuid::Uuid::new_v5(&NAMESPACE, &name).to_string()
}

/// Builds the transaction, refusing before any write what DynamoDB could not store.
fn transaction_items(
    journal: &DynamoDbJournal,
    req: &AppendRequest,
    record: &CommandRecord,
) -> Result<Vec<TransactWriteItem>, JournalError> {
    let config = journal.config();
    if req.events.len() > MAX_EVENTS_PER_APPEND {
        return Err(JournalError::TooLarge {
            what: format!(
                "an append of {} events to {}: DynamoDB allows {MAX_EVENTS_PER_APPEND} events per \
                 append (its transactions hold {MAX_TRANSACTION_ITEMS} items); the sizes count \
                 transaction items",
                req.events.len(),
                req.stream,
            ),
            size: req.events.len() + 2,
            limit: MAX_TRANSACTION_ITEMS,
        });
    }
    let all_old = ReturnValuesOnConditionCheckFailure::AllOld;
    let expected = req.expected_sequence;
    let head_condition = if expected == 0 {
        "attribute_not_exists(pk) OR head = :expected"
    } else {
        "head = :expected"
    };
    let command = items::command_item(record);
    let mut total = items::item_size(&command);
    if total > MAX_ITEM_BYTES {
        return Err(JournalError::TooLarge {
            what: format!("the record of command {}", record.command_id),
            size: total,
            limit: MAX_ITEM_BYTES,
        });
    }
    let mut out = vec![put(
        &config.commands_table(),
        command,
        Some(all_old.clone()),
    )?];
    let head = if req.events.is_empty() {
        TransactWriteItem::builder().condition_check(
            ConditionCheck::builder()
                .table_name(config.events_table())
                .set_key(Some(items::head_key(&req.stream)))
                .condition_expression(head_condition)
                .expression_attribute_values(":expected", items::n(expected))
                .return_values_on_condition_check_failure(all_old)
                .build()
                .map_err(build_error)?,
        )
    } else {
        TransactWriteItem::builder().update(
            Update::builder()
                .table_name(config.events_table())
                .set_key(Some(items::head_key(&req.stream)))
                .update_expression("SET head = :new")
                .condition_expression(head_condition)
                .expression_attribute_values(":expected", items::n(expected))
                .expression_attribute_values(":new", items::n(record_version(record)))
                .return_values_on_condition_check_failure(all_old)
                .build()
                .map_err(build_error)?,
        )
    };
    out.push(head.build());
    for (i, event) in req.events.iter().enumerate() {
        let sequence = expected + 1 + i as u64;
        let item = items::event_item(&req.stream, sequence, event, &req.metadata);
        let size = items::item_size(&item);
        if size > MAX_ITEM_BYTES {
            return Err(JournalError::TooLarge {
                what: format!(
                    "event {sequence} ({}) of {} stored as a DynamoDB item",
                    event.event_type, req.stream
                ),
                size,
                limit: MAX_ITEM_BYTES,
            });
        }
        total += size;
        out.push(put(&config.events_table(), item, None)?);
    }
    if total > MAX_TRANSACTION_BYTES {
        return Err(JournalError::TooLarge {
            what: format!(
                "the append of {} events to {} as one DynamoDB transaction",
                req.events.len(),
                req.stream
            ),
            size: total,
            limit: MAX_TRANSACTION_BYTES,
        });
    }
    Ok(out)
}

fn record_version(record: &CommandRecord) -> u64 {
    match record.outcome {
        CommandOutcome::Succeeded { version, .. } => version,
        CommandOutcome::Rejected { .. } => 0,
    }
}

fn put(
    table: &str,
    item: Item,
    on_failure: Option<ReturnValuesOnConditionCheckFailure>,
) -> Result<TransactWriteItem, JournalError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .set_return_values_on_condition_check_failure(on_failure)
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> JournalError {
    JournalError::Storage(format!("cannot build the dynamodb request: {e}"))
}

#[cfg(test)]
mod tests {
    use kiroku_journal::StreamId;
    use kiroku_journal::conformance::request;

    use super::*;

    #[test]
    fn a_token_names_the_whole_transaction() {
        let s = StreamId::new("room", "r1");
        let req = request(&s, 3, 2, "c1");
        let token = |r: &AppendRequest| idempotency_token(r, &record_of(r));
        assert_eq!(token(&req), token(&req.clone()), "a retry is recognised");
        assert!(token(&req).len() <= 36);
        let mut later = req.clone();
        later.metadata.timestamp_ms += 1;
        assert_ne!(token(&req), token(&later), "decided again: a new request");
        let mut other = req.clone();
        other.events[1].payload.push(0);
        assert_ne!(token(&req), token(&other));
        let rejection = CommandRecord {
            outcome: CommandOutcome::Rejected {
                code: 9,
                message: "no".into(),
            },
            ..record_of(&req)
        };
        assert_ne!(token(&req), idempotency_token(&req, &rejection));
    }
}
