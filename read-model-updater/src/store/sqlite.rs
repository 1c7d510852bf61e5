//! The embedded read store: one SQLite file in WAL mode, beside the journal.
//!
//! One writing connection (the updater's transactions, rebuilds, dead-letter resolution) and a
//! few reading connections; queries run in a read transaction so a query and the active version
//! it read come from one snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use kiroku_journal::wal::{self, WalCeiling};
use parking_lot::Mutex;
use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::StoreError;
use super::sql::{BoxFuture, Dialect, Row, Runner, Sql, Value};

const MAX_READERS: usize = 4;

#[derive(Clone)]
pub struct SqliteReadStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// Checked after every write transaction; the WAL is truncated when the last clone is dropped.
    wal: WalCeiling,
    readers: Mutex<Vec<Connection>>,
    read_permits: Arc<tokio::sync::Semaphore>,
}

fn error(e: rusqlite::Error) -> StoreError {
    let code = match &e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        rusqlite::Error::SqlInputError { error, .. } => Some(error.code),
        _ => None,
    };
    match code {
        Some(code) if transient(code) => StoreError::Unavailable(e.to_string()),
        Some(code) if broken(code) => StoreError::Broken(e.to_string()),
        _ => StoreError::Storage(e.to_string()),
    }
}

/// The same work, tried again, can succeed: another connection holds the lock, or the schema
/// changed under a prepared statement (which is prepared again).
fn transient(code: rusqlite::ErrorCode) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(code, DatabaseBusy | DatabaseLocked | SchemaChanged)
}

/// The store itself cannot do the work, whatever the data. `SQLITE_ERROR` (`Unknown` here) is
/// what a statement that does not fit the schema gets: "no such table", "no such column",
/// "table … has no column named …", an `ON CONFLICT` without its key; SQLite has codes of its
/// own for what a value can cause (constraint, too big, mismatch). The others: the file is
/// read-only, cannot be opened or locked, is not a database or is corrupt, the disk is full or
/// failing, access is denied.
fn broken(code: rusqlite::ErrorCode) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        code,
        Unknown
            | PermissionDenied
            | ReadOnly
            | SystemIoFailure
            | DatabaseCorrupt
            | DiskFull
            | CannotOpen
            | FileLockingProtocolFailed
            | NoLargeFileSupport
            | AuthorizationForStatementDenied
            | NotADatabase
    )
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(error)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 10000;
         PRAGMA foreign_keys = OFF;",
    )
    .map_err(error)?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

impl SqliteReadStore {
    /// Opens (creating if needed) the read store at `path`. Call [`ReadStore::migrate`] before
    /// use ([`crate::open_store`] does).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_wal_ceiling(path, wal::DEFAULT_WAL_CEILING)
    }

    /// [`SqliteReadStore::open`] with another WAL ceiling in bytes (0: unbounded).
    pub fn open_with_wal_ceiling(
        path: impl AsRef<Path>,
        wal_ceiling: u64,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Storage(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let writer = connect(&path)?;
        let wal = WalCeiling::new(&path, wal_ceiling);
        wal.configure(&writer).map_err(error)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                wal,
                readers: Mutex::default(),
                read_permits: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl Drop for Inner {
    /// The last handle is gone (a clean shutdown): leave the whole store in the database file.
    fn drop(&mut self) {
        self.readers.get_mut().clear();
        match wal::truncate(self.writer.get_mut()) {
            Ok(wal::Checkpointed::Truncated) => {}
            Ok(outcome) => tracing::warn!(?outcome, "read store wal not truncated"),
            Err(e) => tracing::warn!(error = %e, "read store wal not truncated"),
        }
    }
}

impl Runner for SqliteReadStore {
    /// One write transaction on a blocking thread.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn Sql) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock();
            let result = transaction(&mut conn, "BEGIN IMMEDIATE", f);
            // Outside the transaction, before the next writer: keep the WAL bounded.
            if let Err(e) = inner.wal.after_commit(&conn) {
                tracing::warn!(error = %e, "read store wal checkpoint failed; trying again after the next commit");
            }
            result
        })
        .await
        .map_err(|e| StoreError::Storage(format!("write task failed: {e}")))?
    }

    /// One read transaction (a consistent snapshot) on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn Sql) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        // At most MAX_READERS reads at once, so every connection opened is kept: opening one
        // costs a schema parse, which under many concurrent readers (live push) dominated.
        let permit = self
            .inner
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Storage("the read store is closed".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let popped = inner.readers.lock().pop();
            let mut conn = match popped {
                Some(c) => c,
                None => connect(&inner.path)?,
            };
            let result = transaction(&mut conn, "BEGIN", f);
            let mut idle = inner.readers.lock();
            if idle.len() < MAX_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Storage(format!("read task failed: {e}")))?
    }
}

fn transaction<T, F>(conn: &mut Connection, begin: &str, f: F) -> Result<T, StoreError>
where
    F: for<'c> FnOnce(&'c mut dyn Sql) -> BoxFuture<'c, Result<T, StoreError>>,
{
    conn.execute_batch(begin).map_err(error)?;
    let mut c = Conn(conn);
    // Every statement completes synchronously: the future is ready on its first poll.
    let result = futures::executor::block_on(f(&mut c));
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    match (result, conn.execute_batch(end).map_err(error)) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(e)) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
        (Err(e), _) => Err(e),
    }
}

struct Conn<'a>(&'a mut Connection);

struct Param<'a>(&'a Value);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::I64(v) => ValueRef::Integer(*v),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

fn placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}

#[async_trait]
impl Sql for Conn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut stmt = self.0.prepare_cached(&placeholders(sql)).map_err(error)?;
        let n = stmt
            .execute(rusqlite::params_from_iter(params.iter().map(Param)))
            .map_err(error)?;
        Ok(n as u64)
    }

    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.0.prepare_cached(&placeholders(sql)).map_err(error)?;
        let columns = stmt.column_count();
        let rows = stmt
            .query_map(
                rusqlite::params_from_iter(params.iter().map(Param)),
                |row| {
                    (0..columns)
                        .map(|i| {
                            Ok(match row.get_ref(i)? {
                                ValueRef::Null => Value::Null,
                                ValueRef::Integer(v) => Value::I64(v),
                                ValueRef::Real(v) => Value::I64(v as i64),
                                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into()),
                                ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
                            })
                        })
                        .collect::<rusqlite::Result<Row>>()
                },
            )
            .map_err(error)?;
        rows.collect::<rusqlite::Result<Vec<Row>>>().map_err(error)
    }

    async fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.0.execute_batch(sql).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ReadStore;

    async fn fresh() -> (Arc<dyn ReadStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteReadStore::open(dir.path().join("views.db")).unwrap();
        store.migrate().await.unwrap();
        (Arc::new(store), dir)
    }

    crate::read_store_suite!(fresh().await);

    #[test]
    fn a_statement_that_does_not_fit_the_schema_or_a_file_that_cannot_be_written_is_a_broken_store()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.db");
        let conn = connect(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
        let run = |sql: &str| error(conn.execute_batch(sql).unwrap_err());
        for sql in [
            "INSERT INTO no_such_table (k) VALUES (1)",
            "UPDATE t SET no_such_column = 1",
            "INSERT INTO t (k, no_such_column) VALUES (1, 1)",
            "INSERT INTO t (k, v) VALUES (1, 'a') ON CONFLICT (v) DO NOTHING",
        ] {
            let e = run(sql);
            assert!(matches!(e, StoreError::Broken(_)), "{sql}: {e:?}");
            assert!(!e.may_be_an_events_fault(), "{sql}");
        }
        // A value the table refuses may be one event's fault.
        conn.execute_batch("INSERT INTO t (k, v) VALUES (1, 'a')")
            .unwrap();
        for sql in [
            "INSERT INTO t (k, v) VALUES (1, 'b')",
            "INSERT INTO t (k, v) VALUES (2, NULL)",
        ] {
            let e = run(sql);
            assert!(matches!(e, StoreError::Storage(_)), "{sql}: {e:?}");
            assert!(e.may_be_an_events_fault(), "{sql}");
        }
        // A database that cannot be written.
        let read_only =
            Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let e = error(
            read_only
                .execute_batch("INSERT INTO t (k, v) VALUES (3, 'c')")
                .unwrap_err(),
        );
        assert!(matches!(e, StoreError::Broken(_)), "{e:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_under_its_ceiling_under_steady_commits_and_is_empty_once_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.db");
        let ceiling = 1024 * 1024;
        let store = SqliteReadStore::open_with_wal_ceiling(&path, ceiling).unwrap();
        let wal = WalCeiling::new(&path, ceiling);
        store
            .write(|sql: &mut dyn Sql| -> BoxFuture<'_, _> {
                Box::pin(async move {
                    sql.batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
                        .await
                })
            })
            .await
            .unwrap();
        let mut largest = 0;
        for _ in 0..400 {
            store
                .write(|sql: &mut dyn Sql| -> BoxFuture<'_, _> {
                    Box::pin(async move {
                        sql.exec("INSERT INTO t (v) VALUES (zeroblob(8000))", &[])
                            .await
                    })
                })
                .await
                .unwrap();
            let reader = store.read(|sql: &mut dyn Sql| -> BoxFuture<'_, _> {
                Box::pin(async move { sql.query("SELECT count(*) FROM t", &[]).await })
            });
            reader.await.unwrap();
            largest = largest.max(wal.wal_size());
        }
        assert!(
            largest <= ceiling,
            "the WAL reached {largest} bytes, over {ceiling}"
        );
        drop(store);
        assert_eq!(wal.wal_size(), 0, "closing the store leaves an empty WAL");
    }
}
