//! [`DynamoDbJournal`]: the [`Journal`] port on DynamoDB.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{DeleteRequest, Select, WriteRequest};
use kiroku_journal::{
    AppendOutcome, AppendRequest, CommandRecord, Envelope, Journal, JournalError, SnapshotRecord,
    StreamId,
};

use crate::client::{Clients, RequestCounter, RequestCounts};
use crate::error::{DynamoDbError, classify};
use crate::items::{self, Item, MAX_ITEM_BYTES};
use crate::retry::retrying;
use crate::{DynamoDbConfig, RetryPolicy};

/// The journal on DynamoDB: events (with a stream head per aggregate) and command records in
/// one table each, snapshots in a third. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DynamoDbJournal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: DynamoDbConfig,
    clients: Clients,
}

impl DynamoDbJournal {
    /// Builds the clients; sends no request (call [`DynamoDbJournal::init_tables`] to create the
    /// tables).
    pub async fn connect(config: DynamoDbConfig) -> Result<Self, JournalError> {
        let clients = Clients::build(&config).await?;
        Ok(Self {
            inner: Arc::new(Inner { config, clients }),
        })
    }

    /// [`DynamoDbConfig::from_url`] then [`DynamoDbJournal::connect`].
    pub async fn from_url(url: &str) -> Result<Self, JournalError> {
        let config =
            DynamoDbConfig::from_url(url).map_err(|e| JournalError::Storage(e.to_string()))?;
        Self::connect(config).await
    }

    pub fn config(&self) -> &DynamoDbConfig {
        &self.inner.config
    }

    /// Every HTTP request sent so far (retries included), per operation.
    pub fn request_counts(&self) -> RequestCounts {
        self.inner.clients.counter.snapshot()
    }

    pub fn request_counter(&self) -> RequestCounter {
        self.inner.clients.counter.clone()
    }

    pub(crate) fn db(&self) -> &aws_sdk_dynamodb::Client {
        &self.inner.clients.dynamodb
    }

    pub(crate) fn streams_client(&self) -> &aws_sdk_dynamodbstreams::Client {
        &self.inner.clients.streams
    }

    pub(crate) fn retry(&self) -> &RetryPolicy {
        &self.inner.config.retry
    }

    pub(crate) async fn read_command_record(
        &self,
        principal: &str,
        command_id: &str,
    ) -> Result<Option<CommandRecord>, JournalError> {
        let table = self.config().commands_table();
        let key = items::command_item_key(principal, command_id);
        let item = self.get_item(&table, key).await?;
        Ok(item
            .map(|item| items::command_record(&table, &item))
            .transpose()?)
    }

    pub(crate) async fn read_highest_sequence(
        &self,
        stream: &StreamId,
    ) -> Result<u64, JournalError> {
        let table = self.config().events_table();
        match self.get_item(&table, items::head_key(stream)).await? {
            Some(item) => Ok(items::head(&table, &item)?),
            None => Ok(0),
        }
    }

    /// A strongly consistent GetItem.
    async fn get_item(&self, table: &str, key: Item) -> Result<Option<Item>, DynamoDbError> {
        retrying(self.retry(), "GetItem", |_| {
            let key = key.clone();
            async move {
                self.db()
                    .get_item()
                    .table_name(table)
                    .set_key(Some(key))
                    .consistent_read(true)
                    .send()
                    .await
                    .map(|out| out.item)
                    .map_err(|e| classify("GetItem", &e))
            }
        })
        .await
    }

    /// One page of a strongly consistent Query, from `start` (a `LastEvaluatedKey`).
    async fn query_page(
        &self,
        q: &RangeQuery<'_>,
        start: Option<Item>,
    ) -> Result<(Vec<Item>, Option<Item>), DynamoDbError> {
        let RangeQuery {
            table,
            pk,
            from,
            to,
            forward,
            limit,
            keys_only,
        } = *q;
        retrying(self.retry(), "Query", |_| {
            let start = start.clone();
            async move {
                let mut q = self
                    .db()
                    .query()
                    .table_name(table)
                    .key_condition_expression("pk = :pk AND seq BETWEEN :from AND :to")
                    .expression_attribute_values(":pk", items::s(pk))
                    .expression_attribute_values(":from", items::n(from))
                    .expression_attribute_values(":to", items::n(to))
                    .consistent_read(true)
                    .scan_index_forward(forward)
                    .set_limit(limit)
                    .set_exclusive_start_key(start);
                if keys_only {
                    q = q
                        .projection_expression("pk, seq")
                        .select(Select::SpecificAttributes);
                }
                let out = q.send().await.map_err(|e| classify("Query", &e))?;
                Ok((out.items.unwrap_or_default(), out.last_evaluated_key))
            }
        })
        .await
    }

    /// Every key in `pk` with `from <= seq <= to`, following `LastEvaluatedKey`.
    async fn all_keys(
        &self,
        table: &str,
        pk: &str,
        range: (u64, u64),
        forward: bool,
    ) -> Result<Vec<Item>, DynamoDbError> {
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let q = RangeQuery {
                table,
                pk,
                from: range.0,
                to: range.1,
                forward,
                limit: None,
                keys_only: true,
            };
            let (page, next) = self.query_page(&q, start).await?;
            keys.extend(page);
            match next {
                Some(next) => start = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Deletes `keys` from `table`, 25 per BatchWriteItem, resending what DynamoDB left unprocessed.
    async fn delete_keys(&self, table: &str, keys: Vec<Item>) -> Result<(), DynamoDbError> {
        for chunk in keys.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|key| {
                    let delete = DeleteRequest::builder().set_key(Some(key.clone())).build();
                    delete.map(|d| WriteRequest::builder().delete_request(d).build())
                })
                .collect::<Result<_, _>>()
                .map_err(|e| DynamoDbError::Service {
                    operation: "BatchWriteItem",
                    code: "build".into(),
                    message: e.to_string(),
                })?;
            let mut rounds = 0;
            while !pending.is_empty() {
                rounds += 1;
                let requests = pending.clone();
                let out = retrying(self.retry(), "BatchWriteItem", |_| {
                    let requests = requests.clone();
                    async move {
                        self.db()
                            .batch_write_item()
                            .request_items(table, requests)
                            .send()
                            .await
                            .map_err(|e| classify("BatchWriteItem", &e))
                    }
                })
                .await?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(table))
                    .unwrap_or_default();
                if !pending.is_empty() && rounds >= self.retry().max_attempts {
                    return Err(DynamoDbError::Unavailable {
                        operation: "BatchWriteItem",
                        attempts: rounds,
                        elapsed_ms: 0,
                        last: format!("{} deletes left unprocessed", pending.len()),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A Query on one partition key over a `seq` range.
#[derive(Clone, Copy)]
struct RangeQuery<'a> {
    table: &'a str,
    pk: &'a str,
    from: u64,
    to: u64,
    forward: bool,
    limit: Option<i32>,
    keys_only: bool,
}

#[async_trait]
impl Journal for DynamoDbJournal {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, JournalError> {
        crate::append::append(self, request).await
    }

    async fn record_rejection(
        &self,
        record: CommandRecord,
        decided_at: u64,
    ) -> Result<CommandRecord, JournalError> {
        crate::append::record_rejection(self, record, decided_at).await
    }

    async fn command_record(
        &self,
        principal: &str,
        command_id: &str,
    ) -> Result<Option<CommandRecord>, JournalError> {
        self.read_command_record(principal, command_id).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, JournalError> {
        let from = from.max(1);
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        let table = self.config().events_table();
        let pk = items::stream_key(stream);
        let mut out = Vec::new();
        let mut start = None;
        // Pages end at `limit` items or 1 MB, whichever comes first; follow them to the end.
        loop {
            let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
            let q = RangeQuery {
                table: &table,
                pk: &pk,
                from,
                to,
                forward: true,
                limit: Some(want),
                keys_only: false,
            };
            let (page, next) = self.query_page(&q, start).await?;
            for item in &page {
                out.push(items::envelope(&table, item)?);
            }
            match next {
                Some(next) if out.len() < limit => start = Some(next),
                _ => return Ok(out),
            }
        }
    }

    async fn highest_sequence(&self, stream: &StreamId) -> Result<u64, JournalError> {
        self.read_highest_sequence(stream).await
    }

    fn has_global_order(&self) -> bool {
        false
    }

    async fn read_all(&self, _after: u64, _limit: usize) -> Result<Vec<Envelope>, JournalError> {
        Err(JournalError::Unsupported(
            "a global order (the DynamoDB journal's feed is DynamoDB Streams)",
        ))
    }

    async fn delete_up_to(&self, stream: &StreamId, to: u64) -> Result<(), JournalError> {
        if to == 0 {
            return Ok(());
        }
        let table = self.config().events_table();
        // From 1: the stream head (sequence 0) stays, so the highest sequence number survives.
        let keys = self
            .all_keys(&table, &items::stream_key(stream), (1, to), true)
            .await?;
        tracing::debug!(stream = %stream, to, deleted = keys.len(), "deleting events");
        Ok(self.delete_keys(&table, keys).await?)
    }

    async fn save_snapshot(&self, snapshot: SnapshotRecord) -> Result<(), JournalError> {
        let table = self.config().snapshots_table();
        let item = items::snapshot_item(&snapshot);
        let size = items::item_size(&item);
        if size > MAX_ITEM_BYTES {
            return Err(JournalError::TooLarge {
                what: format!(
                    "the snapshot of {} at {}",
                    snapshot.stream, snapshot.sequence
                ),
                size,
                limit: MAX_ITEM_BYTES,
            });
        }
        retrying(self.retry(), "PutItem", |_| {
            let item = item.clone();
            let table = &table;
            async move {
                self.db()
                    .put_item()
                    .table_name(table)
                    .set_item(Some(item))
                    .send()
                    .await
                    .map_err(|e| classify("PutItem", &e))
            }
        })
        .await?;
        // Keep the newest `snapshots_to_keep`; older ones go (best effort: they are a cache).
        let keep = self.config().snapshots_to_keep.max(1);
        let pk = items::stream_key(&snapshot.stream);
        let keys = self.all_keys(&table, &pk, (0, u64::MAX), false).await?;
        let stale: Vec<Item> = keys.into_iter().skip(keep).collect();
        if !stale.is_empty() {
            self.delete_keys(&table, stale).await?;
        }
        Ok(())
    }

    async fn latest_snapshot(
        &self,
        stream: &StreamId,
        max_sequence: u64,
    ) -> Result<Option<SnapshotRecord>, JournalError> {
        let table = self.config().snapshots_table();
        let pk = items::stream_key(stream);
        let q = RangeQuery {
            table: &table,
            pk: &pk,
            from: 0,
            to: max_sequence,
            forward: false,
            limit: Some(1),
            keys_only: false,
        };
        let (page, _) = self.query_page(&q, None).await?;
        Ok(page
            .first()
            .map(|item| items::snapshot(&table, stream, item))
            .transpose()?)
    }
}
