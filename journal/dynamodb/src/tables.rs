//! Table management: create the journal's tables (idempotently) and, for tests, delete them.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::operation::create_table::CreateTableError;
use aws_sdk_dynamodb::operation::delete_table::DeleteTableError;
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType, TableDescription, TableStatus,
};

use crate::DynamoDbJournal;
use crate::error::{DynamoDbError, classify};
use crate::items::{PK, SEQ};
use crate::retry::retrying;

/// How long [`DynamoDbJournal::init_tables`] waits for a table to become ACTIVE.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// What [`DynamoDbJournal::init_tables`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitReport {
    /// Tables this call created.
    pub created: Vec<String>,
    /// Tables that existed already (left as they were).
    pub existing: Vec<String>,
}

impl DynamoDbJournal {
    /// Creates the events table (with DynamoDB Streams, `NEW_IMAGE`), the command records table
    /// and the snapshots table, all on-demand, named with the configured prefix, and waits until
    /// they are ACTIVE. Idempotent: existing tables are left alone. This is `kiroku journal init`.
    pub async fn init_tables(&self) -> Result<InitReport, DynamoDbError> {
        let config = self.config();
        let mut report = InitReport::default();
        for (table, ranged, stream) in [
            (config.events_table(), true, true),
            (config.commands_table(), false, false),
            (config.snapshots_table(), true, false),
        ] {
            if let Some(existing) = self.describe(&table).await? {
                if stream && !streams_new_image(&existing) {
                    return Err(DynamoDbError::Table {
                        table,
                        reason: "exists without a NEW_IMAGE DynamoDB Stream; enable it (the \
                                 change feed needs it) or choose another prefix"
                            .into(),
                    });
                }
                report.existing.push(table.clone());
            } else if self.create(&table, ranged, stream).await? {
                report.created.push(table.clone());
            } else {
                report.existing.push(table.clone());
            }
            self.wait_active(&table).await?;
        }
        tracing::info!(created = ?report.created, existing = ?report.existing, "journal tables ready");
        Ok(report)
    }

    /// Deletes the journal's tables (those that exist). For tests and teardown.
    pub async fn delete_tables(&self) -> Result<(), DynamoDbError> {
        for table in self.config().table_names() {
            retrying(self.retry(), "DeleteTable", |_| {
                let table = &table;
                async move {
                    match self.db().delete_table().table_name(table).send().await {
                        Ok(_) => Ok(()),
                        Err(err) => match err.as_service_error() {
                            Some(DeleteTableError::ResourceNotFoundException(_)) => Ok(()),
                            _ => Err(classify("DeleteTable", &err)),
                        },
                    }
                }
            })
            .await?;
        }
        Ok(())
    }

    /// The ARN of the events table's stream (for the Streams reader).
    pub async fn events_stream_arn(&self) -> Result<String, DynamoDbError> {
        let table = self.config().events_table();
        self.describe(&table)
            .await?
            .and_then(|t| t.latest_stream_arn)
            .ok_or_else(|| DynamoDbError::Table {
                table,
                reason: "has no stream; run init_tables (kiroku journal init)".into(),
            })
    }

    async fn describe(&self, table: &str) -> Result<Option<TableDescription>, DynamoDbError> {
        retrying(self.retry(), "DescribeTable", |_| async move {
            match self.db().describe_table().table_name(table).send().await {
                Ok(out) => Ok(out.table),
                Err(err) => match err.as_service_error() {
                    Some(DescribeTableError::ResourceNotFoundException(_)) => Ok(None),
                    _ => Err(classify("DescribeTable", &err)),
                },
            }
        })
        .await
    }

    /// Creates `table`; false when somebody else created it first.
    async fn create(&self, table: &str, ranged: bool, stream: bool) -> Result<bool, DynamoDbError> {
        let attribute = |name: &str, kind| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
        };
        let mut attributes = vec![attribute(PK, ScalarAttributeType::S)];
        let mut keys = vec![key(PK, KeyType::Hash)];
        if ranged {
            attributes.push(attribute(SEQ, ScalarAttributeType::N));
            keys.push(key(SEQ, KeyType::Range));
        }
        let attributes = attributes
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| build(table, e))?;
        let keys = keys
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| build(table, e))?;
        let stream = stream
            .then(|| {
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewImage)
                    .build()
            })
            .transpose()
            .map_err(|e| build(table, e))?;
        retrying(self.retry(), "CreateTable", |_| {
            let (attributes, keys, stream) = (attributes.clone(), keys.clone(), stream.clone());
            async move {
                let sent = self
                    .db()
                    .create_table()
                    .table_name(table)
                    .set_attribute_definitions(Some(attributes))
                    .set_key_schema(Some(keys))
                    .billing_mode(BillingMode::PayPerRequest)
                    .set_stream_specification(stream)
                    .send()
                    .await;
                match sent {
                    Ok(_) => {
                        tracing::info!(table, "created table");
                        Ok(true)
                    }
                    Err(err) => match err.as_service_error() {
                        Some(CreateTableError::ResourceInUseException(_)) => Ok(false),
                        _ => Err(classify("CreateTable", &err)),
                    },
                }
            }
        })
        .await
    }

    async fn wait_active(&self, table: &str) -> Result<(), DynamoDbError> {
        let started = Instant::now();
        loop {
            let status = self.describe(table).await?.and_then(|t| t.table_status);
            if status == Some(TableStatus::Active) {
                return Ok(());
            }
            if started.elapsed() > ACTIVE_TIMEOUT {
                return Err(DynamoDbError::Table {
                    table: table.into(),
                    reason: format!(
                        "not ACTIVE after {} s (status {status:?})",
                        ACTIVE_TIMEOUT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn streams_new_image(table: &TableDescription) -> bool {
    table
        .stream_specification
        .as_ref()
        .is_some_and(|s| s.stream_enabled && s.stream_view_type == Some(StreamViewType::NewImage))
}

fn build(table: &str, e: aws_sdk_dynamodb::error::BuildError) -> DynamoDbError {
    DynamoDbError::Table {
        table: table.into(),
        reason: format!("cannot build the request: {e}"),
    }
}
