//! The scale read store: PostgreSQL through a connection pool.
//!
//! Same SQL as SQLite ([`super::sql`]). Writers of one projection (the updater, a rebuild, a
//! dead-letter resolution) serialize on a transaction-scoped advisory lock; queries run in
//! read-only repeatable-read transactions so a query and the active version it read come from one
//! snapshot.

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{IsolationLevel, NoTls};

use super::StoreError;
use super::sql::{BoxFuture, Dialect, Row, Runner, Sql, Value};

/// How long making a connection may take unless the URL says (`connect_timeout=`).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct PostgresReadStore {
    pool: Pool,
}

fn error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            if transient_sqlstate(code) {
                StoreError::Unavailable(db.to_string())
            } else if broken_sqlstate(code) {
                StoreError::Broken(db.to_string())
            } else {
                StoreError::Storage(db.to_string())
            }
        }
        None if connection_lost(&e) => StoreError::Unavailable(e.to_string()),
        None if wrong_column_type(&e) => StoreError::Broken(e.to_string()),
        None => StoreError::Storage(e.to_string()),
    }
}

/// SQLSTATEs that say the store itself cannot do the work, whatever the data: the statement
/// does not fit the schema (class 42: an undefined table, column or function, a datatype
/// mismatch, a missing privilege, a syntax error), the database, schema or credentials are
/// wrong (3D, 3F, 28), the server's files or internals failed (58, XX, F0), or the database
/// was dropped. Unlike class 22 (a value the column refuses) or 23 (a constraint), no event's
/// data causes these.
fn broken_sqlstate(code: &str) -> bool {
    ["42", "3D", "3F", "28", "58", "XX", "F0"]
        .iter()
        .any(|class| code.starts_with(class))
        || matches!(
            code,
            "57P04" // database_dropped
                | "0A000" // feature_not_supported (e.g. a cached plan whose table changed shape)
        )
}

/// A column read back in another type than the store's own schema gives it: the table is of
/// another shape.
fn wrong_column_type(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<tokio_postgres::types::WrongType>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// SQLSTATEs after which the same work, tried again (on a new connection if need be), can
/// succeed: the connection or the server went away (class 08, admin or crash shutdown, a
/// standby not yet writable after a failover), the transaction lost a race (serialization
/// failure, deadlock), or the server lacked resources for a moment.
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" // serialization_failure
                | "40P01" // deadlock_detected
                | "40003" // statement_completion_unknown
                | "57P01" // admin_shutdown (pg_terminate_backend)
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now (starting up, or in recovery)
                | "57P05" // idle_session_timeout
                | "57014" // query_canceled (statement_timeout, pg_cancel_backend)
                | "55P03" // lock_not_available (lock_timeout)
                | "25006" // read_only_sql_transaction: a standby that is not promoted yet
                | "53000" // insufficient_resources
                | "53100" // disk_full
                | "53200" // out_of_memory
                | "53300" // too_many_connections
        )
}

/// A failure below SQL: the connection closed, broke (I/O) or timed out. Errors of our own
/// making (a parameter or column of the wrong type) are not transient.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    if e.is_closed() {
        return true;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    // tokio-postgres keeps its error kinds private; these two carry no source.
    let text = e.to_string();
    text == "timeout waiting for server" || text == "unexpected message from server"
}

/// Getting a connection from the pool: a timeout, a closed pool or a connection that could
/// not be made are transient; anything else is classified as the backend's error.
fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => match error(e) {
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("cannot connect to PostgreSQL: {m}"))
            }
            StoreError::Broken(m) => {
                StoreError::Broken(format!("cannot connect to PostgreSQL: {m}"))
            }
            StoreError::Storage(m) => {
                StoreError::Storage(format!("cannot connect to PostgreSQL: {m}"))
            }
            other => other,
        },
        PoolError::Timeout(_) | PoolError::Closed => {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}"))
        }
        other => StoreError::Storage(format!("cannot connect to PostgreSQL: {other}")),
    }
}

impl PostgresReadStore {
    /// Connects to `url` (`postgres://user@host:port/db`). Call [`ReadStore::migrate`] before
    /// use ([`crate::open_store`] does).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Storage(format!("bad PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            // An unreachable server (a failover in progress) is a transient fault the updater
            // retries, not a wait of minutes on a SYN.
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .build()
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        // Fail now, with a clear message, if the server is not there.
        let _probe = pool.get().await.map_err(pool_error)?;
        Ok(Self { pool })
    }

    async fn run<T, F>(&self, read_only: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn Sql) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let mut builder = client.build_transaction();
        if read_only {
            builder = builder
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true);
        }
        let tx = builder.start().await.map_err(error)?;
        let mut tx = PgTx(tx);
        let value = f(&mut tx).await?;
        tx.0.commit().await.map_err(error)?;
        Ok(value)
    }
}

impl Runner for PostgresReadStore {
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn Sql) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        self.run(true, f).await
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn Sql) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        self.run(false, f).await
    }
}

struct PgTx<'a>(Transaction<'a>);

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::I64(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::I64(v) => v.to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Bytes(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn row(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let get = |i: usize| -> Result<Value, tokio_postgres::Error> {
        let ty = r.columns()[i].type_();
        Ok(if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?
                .map_or(Value::Null, Value::I64)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?
                .map_or(Value::Null, |v| Value::I64(v.into()))
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)?
                .map_or(Value::Null, Value::Bytes)
        } else {
            r.try_get::<_, Option<String>>(i)?
                .map_or(Value::Null, Value::Text)
        })
    };
    (0..r.len()).map(|i| get(i).map_err(error)).collect()
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

#[async_trait]
impl Sql for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let stmt = self.0.prepare_cached(sql).await.map_err(error)?;
        self.0.execute(&stmt, &refs(params)).await.map_err(error)
    }

    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.0.prepare_cached(sql).await.map_err(error)?;
        let rows = self.0.query(&stmt, &refs(params)).await.map_err(error)?;
        rows.iter().map(row).collect()
    }

    async fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.0.batch_execute(sql).await.map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ReadStore;

    /// A store in a schema of its own in the test database, dropped afterwards.
    pub(crate) struct Schema {
        url: String,
        name: String,
    }

    impl Drop for Schema {
        fn drop(&mut self) {
            let (url, name) = (self.url.clone(), self.name.clone());
            // Drop's cleanup must not need the test's runtime (it is shutting down).
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
                    tokio::spawn(conn);
                    client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await
                })
                .map_err(std::io::Error::other)
            })
            .join();
        }
    }

    pub(crate) fn test_url() -> String {
        std::env::var("KIROKU_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "KIROKU_TEST_POSTGRES_URL is not set: these tests need PostgreSQL. Run them with \
                 `bash deploy/local/test.sh`, or `eval $(bash deploy/local/postgres.sh)` first"
            )
        })
    }

    pub(crate) async fn fresh() -> (Arc<dyn ReadStore>, Schema) {
        let url = test_url();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&url, NoTls)
            .await
            .expect("PostgreSQL is up");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let scoped = format!("{url}{sep}options=-c%20search_path%3D{name}");
        let store: Arc<dyn ReadStore> =
            Arc::new(PostgresReadStore::connect(&scoped).await.unwrap());
        store.migrate().await.unwrap();
        (store, Schema { url, name })
    }

    crate::read_store_suite!(fresh().await);

    #[test]
    fn lost_connections_shutdowns_lost_races_and_short_resources_are_transient() {
        for code in [
            "08000", "08003", "08006", "08001", "57P01", "57P02", "57P03", "40001", "40P01",
            "53300", "25006", "57014", "55P03",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
        // Our own mistakes, a schema we do not know, bad credentials, a missing database.
        for code in [
            "42P01", "42703", "23505", "22P02", "28P01", "3D000", "XX000", "0A000",
        ] {
            assert!(!transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn a_statement_that_does_not_fit_the_schema_is_a_broken_store_and_a_refused_value_is_not() {
        // Undefined table, column, function; datatype mismatch; no privilege; syntax; no such
        // database or schema; bad credentials; I/O; corruption; a dropped database.
        for code in [
            "42P01", "42703", "42883", "42804", "42501", "42601", "42P10", "3D000", "3F000",
            "28P01", "58030", "XX001", "XX000", "57P04", "0A000",
        ] {
            assert!(broken_sqlstate(code), "{code}");
            assert!(!transient_sqlstate(code), "{code}");
        }
        // One event's data: constraints (23), data exceptions (22), an index row too large
        // (54000), a trigger's exception (P0001). And the transient ones are not broken.
        for code in [
            "23505", "23502", "23514", "23503", "22001", "22003", "22P02", "22021", "54000",
            "P0001", "40001", "57P01", "08006", "25006", "53100",
        ] {
            assert!(!broken_sqlstate(code), "{code}");
        }
    }

    async fn one_query(store: &PostgresReadStore, sql: &'static str) -> Result<(), StoreError> {
        store
            .run(false, move |tx| {
                Box::pin(async move { tx.query(sql, &[]).await.map(drop) })
            })
            .await
    }

    #[tokio::test]
    async fn a_connection_an_administrator_terminates_is_a_transient_error_and_the_next_try_reconnects()
     {
        let store = PostgresReadStore::connect(&test_url()).await.unwrap();
        let e = one_query(&store, "SELECT pg_terminate_backend(pg_backend_pid())")
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        // The pool may hand out the dead connection once more (also transient); then a new one.
        let mut tries = 0;
        loop {
            tries += 1;
            match one_query(&store, "SELECT 1").await {
                Ok(()) => break,
                Err(e) if e.is_transient() && tries < 3 => continue,
                Err(e) => panic!("try {tries}: {e:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_statement_that_is_wrong_is_not_transient() {
        let store = PostgresReadStore::connect(&test_url()).await.unwrap();
        let e = one_query(&store, "SELECT no_such_column FROM no_such_table")
            .await
            .unwrap_err();
        assert!(!e.is_transient(), "{e:?}");
        assert!(matches!(e, StoreError::Broken(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_value_a_constraint_refuses_may_be_an_events_fault() {
        let store = PostgresReadStore::connect(&test_url()).await.unwrap();
        let e = store
            .run(false, |tx| {
                Box::pin(async move {
                    tx.batch("CREATE TEMPORARY TABLE t (v BIGINT CHECK (v > 0))")
                        .await?;
                    tx.batch("INSERT INTO t VALUES (0)").await
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Storage(_)), "{e:?}");
        assert!(e.may_be_an_events_fault());
    }
}
