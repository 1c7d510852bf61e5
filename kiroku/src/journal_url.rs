//! Which journal to use, from a URL (`KIROKU_JOURNAL`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use kiroku_journal::{Journal, SqliteJournal, SqliteJournalOptions};
use kiroku_journal_dynamodb::{DynamoDbConfig, DynamoDbJournal};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalUrl {
    /// `sqlite:///absolute/path.db`, `sqlite://relative/path.db`, or a bare path.
    Sqlite(PathBuf),
    /// `dynamodb://?region=…&prefix=…[&endpoint=http://…]` (no endpoint: real AWS, standard
    /// credential chain).
    DynamoDb(String),
}

/// How kiroku keeps its SQLite files (the embedded journal and read store).
#[derive(clap::Args, Debug, Clone)]
pub struct SqliteArgs {
    /// Checkpoint and truncate a SQLite WAL before it passes this many MiB (0: unbounded).
    #[arg(long, env = "KIROKU_SQLITE_WAL_CEILING_MIB", default_value_t = 64)]
    pub wal_ceiling_mib: u64,
}

impl Default for SqliteArgs {
    fn default() -> Self {
        Self {
            wal_ceiling_mib: kiroku_journal::wal::DEFAULT_WAL_CEILING >> 20,
        }
    }
}

impl SqliteArgs {
    pub fn wal_ceiling(&self) -> u64 {
        self.wal_ceiling_mib << 20
    }

    fn journal_options(&self) -> SqliteJournalOptions {
        SqliteJournalOptions {
            wal_ceiling: self.wal_ceiling(),
            ..SqliteJournalOptions::default()
        }
    }
}

/// An opened journal.
pub enum Opened {
    Sqlite(SqliteJournal),
    DynamoDb(DynamoDbJournal),
}

impl Opened {
    pub fn port(&self) -> Arc<dyn Journal> {
        match self {
            Opened::Sqlite(j) => Arc::new(j.clone()),
            Opened::DynamoDb(j) => Arc::new(j.clone()),
        }
    }

    /// Leaves the whole journal in its file for a clean shutdown (SQLite: the WAL is checkpointed
    /// and truncated). Nothing to do for DynamoDB.
    pub async fn close(&self) {
        if let Opened::Sqlite(j) = self
            && let Err(e) = j.truncate_wal().await
        {
            tracing::warn!(error = %e, "the journal's WAL was not truncated at shutdown");
        }
    }

    /// The writer's commit notifications, when this process writes the journal's global order.
    pub fn committed(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self {
            Opened::Sqlite(j) => Some(j.committed_position()),
            Opened::DynamoDb(_) => None,
        }
    }
}

impl JournalUrl {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                bail!("journal URL {url:?} names no file; expected sqlite:///path/to/journal.db");
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("dynamodb://") {
            DynamoDbConfig::from_url(url).with_context(|| format!("journal URL {url:?}"))?;
            return Ok(Self::DynamoDb(url.to_owned()));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            bail!(
                "unsupported journal URL scheme {scheme:?} in {url:?}; supported: sqlite://, dynamodb://"
            );
        }
        if url.is_empty() {
            bail!("the journal URL is empty");
        }
        Ok(Self::Sqlite(PathBuf::from(url)))
    }

    /// Opens the journal. With `create`, DynamoDB tables are created if missing (idempotent);
    /// SQLite files always are.
    pub async fn open(&self, create: bool, sqlite: &SqliteArgs) -> anyhow::Result<Opened> {
        match self {
            Self::Sqlite(path) => {
                let journal = SqliteJournal::open(path, sqlite.journal_options())
                    .with_context(|| format!("opening the journal at {}", path.display()))?;
                Ok(Opened::Sqlite(journal))
            }
            Self::DynamoDb(url) => {
                let journal = DynamoDbJournal::from_url(url)
                    .await
                    .with_context(|| format!("connecting to {url}"))?;
                if create {
                    let report = journal
                        .init_tables()
                        .await
                        .context("creating the DynamoDB tables")?;
                    for table in &report.created {
                        println!("created DynamoDB table {table}");
                    }
                }
                Ok(Opened::DynamoDb(journal))
            }
        }
    }
}

impl std::fmt::Display for JournalUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::DynamoDb(url) => write!(f, "{url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_journal_urls_and_refuses_others() {
        assert_eq!(
            JournalUrl::parse("sqlite:///var/k.db").unwrap(),
            JournalUrl::Sqlite("/var/k.db".into())
        );
        assert_eq!(
            JournalUrl::parse("data/k.db").unwrap(),
            JournalUrl::Sqlite("data/k.db".into())
        );
        let dynamo = "dynamodb://?endpoint=http://127.0.0.1:8000&region=us-east-1&prefix=k_";
        assert_eq!(
            JournalUrl::parse(dynamo).unwrap(),
            JournalUrl::DynamoDb(dynamo.into())
        );
        assert!(JournalUrl::parse("sqlite://").is_err());
        assert!(JournalUrl::parse("").is_err());
        assert!(
            JournalUrl::parse("mysql://x")
                .unwrap_err()
                .to_string()
                .contains("unsupported")
        );
        assert!(JournalUrl::parse("dynamodb://?endpoint=not a url").is_err());
    }
}
