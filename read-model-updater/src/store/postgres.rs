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

#[derive(Clone)]
pub struct PostgresReadStore {
    pool: Pool,
}

fn error(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() || e.as_db_error().is_none() {
        return StoreError::Unavailable(e.to_string());
    }
    let db = e.as_db_error().expect("checked above");
    // serialization_failure, deadlock_detected, too_many_connections, cannot_connect_now
    if ["40001", "40P01", "53300", "57P03"].contains(&db.code().code()) {
        StoreError::Unavailable(db.to_string())
    } else {
        StoreError::Storage(db.to_string())
    }
}

impl PostgresReadStore {
    /// Connects to `url` (`postgres://user@host:port/db`). Call [`ReadStore::migrate`] before
    /// use ([`crate::open_store`] does).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Storage(format!("bad PostgreSQL URL: {e}")))?;
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
        let _probe = pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        Ok(Self { pool })
    }

    async fn run<T, F>(&self, read_only: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn Sql) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        let mut client =
            self.pool.get().await.map_err(|e| {
                StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}"))
            })?;
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
}
