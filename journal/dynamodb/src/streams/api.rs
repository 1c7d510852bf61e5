//! The three DynamoDB Streams calls the reader makes, as a trait: [`SdkStreams`] sends them to
//! DynamoDB (or moto); the tests script them (`scripted.rs`) to reach what a local server never
//! shows — shards that close and split, empty pages, trimmed records, expired iterators.

use std::fmt;

use async_trait::async_trait;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodbstreams::operation::get_records::GetRecordsError;
use aws_sdk_dynamodbstreams::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_dynamodbstreams::types::{
    AttributeValue as StreamValue, OperationType, Record, ShardIteratorType,
};

use crate::error::{Failure, classify};
use crate::items::Item;

/// One shard as `DescribeStream` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardInfo {
    pub id: String,
    pub parent: Option<String>,
    /// The shard has an ending sequence number: it takes no more records.
    pub closed: bool,
    /// `SequenceNumberRange.StartingSequenceNumber`: where the shard's records begin (a record's
    /// sequence number is never below it). The service leaves it out for a shard that has had no
    /// record yet.
    pub starting_sequence_number: Option<String>,
}

/// One page of `DescribeStream`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShardList {
    pub shards: Vec<ShardInfo>,
    pub last_evaluated_shard_id: Option<String>,
}

/// One stream record, reduced to what the reader needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChangeRecord {
    pub sequence_number: Option<String>,
    /// A deletion (`REMOVE`): it has no new image and is never an event.
    pub removed: bool,
    /// The item after the change, as the table holds it.
    pub new_image: Option<Item>,
}

/// One page of `GetRecords`.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecordsPage {
    pub records: Vec<ChangeRecord>,
    /// `None`: the shard is closed and has been read to its end.
    pub next_shard_iterator: Option<String>,
}

/// Where a shard iterator starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position<'a> {
    /// At the oldest record the shard still has (`TRIM_HORIZON`).
    TrimHorizon,
    /// Just after this sequence number (`AFTER_SEQUENCE_NUMBER`).
    After(&'a str),
    /// At this sequence number (`AT_SEQUENCE_NUMBER`).
    At(&'a str),
}

/// What a Streams call can answer besides success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The iterator is older than 15 minutes.
    ExpiredIterator,
    /// The position asked for is older than the stream's 24-hour retention.
    TrimmedData,
    /// Anything else, classified for the retry loop.
    Failed(Failure),
}

#[async_trait]
pub(crate) trait StreamsApi: Send + Sync + fmt::Debug {
    /// One page of the stream's shards, after `exclusive_start_shard_id`.
    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
    ) -> Result<ShardList, CallError>;

    /// An iterator at `position`; [`CallError::TrimmedData`] when the position is older than
    /// the shard's trim horizon. `Ok(None)` when the service returns no iterator.
    async fn get_shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: Position<'_>,
    ) -> Result<Option<String>, CallError>;

    /// At most `limit` records from `iterator`.
    async fn get_records(&self, iterator: &str, limit: i32) -> Result<RecordsPage, CallError>;
}

/// The real client.
#[derive(Debug, Clone)]
pub(crate) struct SdkStreams {
    pub client: aws_sdk_dynamodbstreams::Client,
}

#[async_trait]
impl StreamsApi for SdkStreams {
    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
    ) -> Result<ShardList, CallError> {
        let out = self
            .client
            .describe_stream()
            .stream_arn(stream_arn)
            .set_exclusive_start_shard_id(exclusive_start_shard_id.map(str::to_owned))
            .send()
            .await
            .map_err(|e| CallError::Failed(classify("DescribeStream", &e)))?;
        let Some(description) = out.stream_description else {
            return Ok(ShardList::default());
        };
        let shards = description
            .shards()
            .iter()
            .filter_map(|shard| {
                Some(ShardInfo {
                    id: shard.shard_id()?.to_owned(),
                    parent: shard.parent_shard_id().map(str::to_owned),
                    closed: shard
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_some(),
                    starting_sequence_number: shard
                        .sequence_number_range()
                        .and_then(|r| r.starting_sequence_number())
                        .map(str::to_owned),
                })
            })
            .collect();
        Ok(ShardList {
            shards,
            last_evaluated_shard_id: description.last_evaluated_shard_id,
        })
    }

    async fn get_shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: Position<'_>,
    ) -> Result<Option<String>, CallError> {
        let (kind, sequence_number) = match position {
            Position::TrimHorizon => (ShardIteratorType::TrimHorizon, None),
            Position::After(seq) => (ShardIteratorType::AfterSequenceNumber, Some(seq)),
            Position::At(seq) => (ShardIteratorType::AtSequenceNumber, Some(seq)),
        };
        let sent = self
            .client
            .get_shard_iterator()
            .stream_arn(stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(kind)
            .set_sequence_number(sequence_number.map(str::to_owned))
            .send()
            .await;
        match sent {
            Ok(out) => Ok(out.shard_iterator),
            Err(e) => match e.as_service_error() {
                Some(GetShardIteratorError::TrimmedDataAccessException(_)) => {
                    Err(CallError::TrimmedData)
                }
                _ => Err(CallError::Failed(classify("GetShardIterator", &e))),
            },
        }
    }

    async fn get_records(&self, iterator: &str, limit: i32) -> Result<RecordsPage, CallError> {
        let sent = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit)
            .send()
            .await;
        match sent {
            Ok(page) => Ok(RecordsPage {
                records: page
                    .records
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(change)
                    .collect(),
                next_shard_iterator: page.next_shard_iterator,
            }),
            Err(e) => match e.as_service_error() {
                Some(GetRecordsError::ExpiredIteratorException(_)) => {
                    Err(CallError::ExpiredIterator)
                }
                Some(GetRecordsError::TrimmedDataAccessException(_)) => Err(CallError::TrimmedData),
                _ => Err(CallError::Failed(classify("GetRecords", &e))),
            },
        }
    }
}

/// A stream record as a [`ChangeRecord`]; `None` for one without its `dynamodb` part.
fn change(record: Record) -> Option<ChangeRecord> {
    let removed = record.event_name == Some(OperationType::Remove);
    let stream_record = record.dynamodb?;
    Some(ChangeRecord {
        sequence_number: stream_record.sequence_number,
        removed,
        new_image: stream_record.new_image.map(|image| {
            image
                .into_iter()
                .filter_map(|(k, v)| Some((k, convert(v)?)))
                .collect()
        }),
    })
}

/// A stream record's attribute as a table attribute (the journal writes only S, N and B).
fn convert(value: StreamValue) -> Option<AttributeValue> {
    match value {
        StreamValue::S(v) => Some(AttributeValue::S(v)),
        StreamValue::N(v) => Some(AttributeValue::N(v)),
        StreamValue::B(v) => Some(AttributeValue::B(Blob::new(v.into_inner()))),
        _ => None,
    }
}
