//! Test harness: a journal on uniquely prefixed tables of the moto server started by
//! `deploy/local/with-moto.sh`, deleted again when the guard drops.

use std::sync::Arc;
use std::time::Duration;

use kiroku_journal::Journal;
use kiroku_journal_dynamodb::{DynamoDbConfig, DynamoDbJournal, RetryPolicy};

pub const ENDPOINT_VAR: &str = "KIROKU_TEST_DYNAMODB_ENDPOINT";

/// The endpoint of the DynamoDB-compatible test server. Missing → the test fails, loudly.
pub fn endpoint() -> String {
    std::env::var(ENDPOINT_VAR).unwrap_or_else(|_| {
        panic!(
            "{ENDPOINT_VAR} is not set: these tests need a DynamoDB-compatible server. Run them as \
             `bash deploy/local/with-moto.sh cargo test -p kiroku-journal-dynamodb` (it starts moto \
             via deploy/local/moto.sh and sets {ENDPOINT_VAR})"
        )
    })
}

/// A config on `endpoint` with a fresh table prefix. Generous retries: moto answers HTTP 500
/// now and then under concurrency.
pub fn config_for(endpoint: &str) -> DynamoDbConfig {
    let prefix = format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    DynamoDbConfig {
        endpoint: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        table_prefix: prefix,
        snapshots_to_keep: 1,
        retry: RetryPolicy {
            max_attempts: 8,
            deadline: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(30),
            ..RetryPolicy::default()
        },
    }
}

pub fn config() -> DynamoDbConfig {
    config_for(&endpoint())
}

/// Deletes the tables of its config when dropped (on a thread of its own, so it works from
/// inside a test's runtime).
pub struct Tables {
    pub config: DynamoDbConfig,
}

impl Drop for Tables {
    fn drop(&mut self) {
        let config = DynamoDbConfig {
            endpoint: Some(endpoint()),
            ..self.config.clone()
        };
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            rt.block_on(async {
                let journal = DynamoDbJournal::connect(config).await.expect("connect");
                if let Err(e) = journal.delete_tables().await {
                    eprintln!("could not delete test tables: {e}");
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A journal on freshly created tables, and the guard that deletes them.
pub async fn journal() -> (DynamoDbJournal, Tables) {
    journal_with(config()).await
}

pub async fn journal_with(config: DynamoDbConfig) -> (DynamoDbJournal, Tables) {
    let journal = DynamoDbJournal::connect(config.clone())
        .await
        .expect("connect");
    journal.init_tables().await.expect("init_tables");
    (journal, Tables { config })
}

/// For the conformance suite.
pub async fn fresh() -> (Arc<dyn Journal>, Tables) {
    let (journal, tables) = journal().await;
    (Arc::new(journal), tables)
}
