//! Shared by the updater's tests: a real SQLite journal, a real read store (SQLite or a
//! PostgreSQL schema of its own), an updater running in the background, and the comparison of
//! live views with a rebuild from the journal.
#![allow(dead_code)]

pub mod faults;

use std::sync::Arc;
use std::time::Duration;

use kiroku_chat::{Room, RoomEvent};
use kiroku_core::Aggregate;
use kiroku_journal::{
    AppendRequest, EventMetadata, Journal, NewEvent, SqliteJournal, SqliteJournalOptions, StreamId,
};
use kiroku_read_model_updater::{
    Consistency, ConsistencyWaiter, Feed, JournalFeed, PostgresReadStore, Progress, Projection,
    ROOMS, ReadStore, RoomsProjection, SqliteReadStore, Updater, UpdaterConfig, UpdaterHealth,
    rebuild,
};
use tokio::sync::{oneshot, watch};

pub struct World {
    dir: tempfile::TempDir,
    pub journal: SqliteJournal,
    pub store: Arc<dyn ReadStore>,
    /// Where the store lives when it is PostgreSQL (dropped with the world).
    pub schema: Option<PgSchema>,
}

impl World {
    /// A journal and a SQLite read store in a fresh directory.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteReadStore::open(dir.path().join("views.db")).unwrap();
        Self::with_store(dir, Arc::new(store), None).await
    }

    /// A journal and a PostgreSQL read store in a schema of its own.
    pub async fn on_postgres() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let schema = PgSchema::create().await;
        let store = PostgresReadStore::connect(&schema.store_url)
            .await
            .expect("PostgreSQL is up");
        Self::with_store(dir, Arc::new(store), Some(schema)).await
    }

    async fn with_store(
        dir: tempfile::TempDir,
        store: Arc<dyn ReadStore>,
        schema: Option<PgSchema>,
    ) -> Self {
        let journal = SqliteJournal::open(
            dir.path().join("journal.db"),
            SqliteJournalOptions::default(),
        )
        .unwrap();
        store.migrate().await.unwrap();
        Self {
            dir,
            journal,
            store,
            schema,
        }
    }

    /// Runs `sqlite` (SQLite store) or `postgres` (PostgreSQL store, in its schema) on the read
    /// store's database from a connection of the test's own, as an administrator would: to
    /// break the store for real, or repair it.
    pub async fn alter_store(&self, sqlite: &str, postgres: &str) {
        match &self.schema {
            Some(schema) => {
                let admin = schema.admin().await;
                admin
                    .batch_execute(&format!("SET search_path TO {}; {postgres}", schema.name))
                    .await
                    .unwrap_or_else(|e| panic!("{postgres}: {e}"));
            }
            None => {
                let path = self.dir.path().join("views.db");
                let sql = sqlite.to_owned();
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(path).unwrap();
                    conn.busy_timeout(Duration::from_secs(10)).unwrap();
                    conn.execute_batch(&sql)
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                })
                .await
                .unwrap();
            }
        }
    }

    pub fn journal(&self) -> Arc<dyn Journal> {
        Arc::new(self.journal.clone())
    }

    pub fn config() -> UpdaterConfig {
        UpdaterConfig {
            batch_size: 64,
            retry_backoff: Duration::from_millis(1),
            restart_backoff: Duration::from_millis(5),
            ..UpdaterConfig::default()
        }
    }

    pub fn updater(&self, projection: Arc<dyn Projection>, feed: Arc<dyn Feed>) -> Updater {
        self.updater_on(self.store.clone(), projection, feed, Self::config())
    }

    /// An updater writing to `store` (e.g. a fault-injecting wrapper of the world's store).
    pub fn updater_on(
        &self,
        store: Arc<dyn ReadStore>,
        projection: Arc<dyn Projection>,
        feed: Arc<dyn Feed>,
        config: UpdaterConfig,
    ) -> Updater {
        Updater::new(store, self.journal(), feed, projection, config)
    }

    pub fn feed(&self) -> Arc<dyn Feed> {
        Arc::new(JournalFeed::new(
            self.journal(),
            Some(self.journal.committed_position()),
        ))
    }

    /// Runs an updater in the background until the returned sender is dropped or fired.
    pub fn spawn(
        &self,
        mut updater: Updater,
    ) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            updater
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        (stop, task)
    }

    pub async fn append(&self, room: &str, expected: u64, events: &[RoomEvent]) {
        let request = AppendRequest {
            stream: StreamId::new("room", room),
            expected_sequence: expected,
            events: events
                .iter()
                .map(|e| {
                    let enc = Room::encode(e);
                    NewEvent {
                        event_type: enc.event_type,
                        schema_version: enc.schema_version,
                        payload: enc.payload,
                    }
                })
                .collect(),
            metadata: EventMetadata {
                command_id: uuid::Uuid::new_v4().to_string(),
                correlation_id: "test".into(),
                causation_id: String::new(),
                principal: "alice".into(),
                timestamp_ms: 1_700_000_000_000 + expected as i64,
            },
        };
        self.journal.append(request).await.unwrap();
    }

    /// A room with `messages` posts: 1 + messages events.
    pub async fn room_with_messages(&self, room: &str, messages: u64) {
        self.append(room, 0, &[created(room)]).await;
        for i in 1..=messages {
            self.append(
                room,
                i,
                &[posted(&format!("{room}-m{i}"), &format!("body {i}"))],
            )
            .await;
        }
    }

    pub async fn wait_for(&self, waiter: &ConsistencyWaiter, room: &str, version: u64) {
        let reached = waiter
            .wait_for(
                &StreamId::new("room", room),
                version,
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        assert!(
            matches!(reached, Consistency::Reached { .. }),
            "{room}@{version}: {reached:?}"
        );
    }

    /// Waits until the updater has committed everything the journal holds now.
    pub async fn wait_for_position(&self, updater_progress: &mut watch::Receiver<Progress>) {
        let head = self.journal.head_position().await.unwrap().unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            updater_progress.wait_for(|p| p.position >= head),
        )
        .await
        .expect("the updater catches up")
        .unwrap();
    }

    /// Waits until the updater commits again (after faults).
    pub async fn wait_until_committing(&self, health: &mut watch::Receiver<UpdaterHealth>) {
        tokio::time::timeout(Duration::from_secs(30), health.wait_for(|h| h.committing))
            .await
            .expect("the updater commits again")
            .unwrap();
    }

    /// Rebuilds the rooms projection from the journal and asserts that the rebuilt views equal
    /// version `live` of the live ones, row for row (views, applied sequence numbers).
    pub async fn assert_views_equal_a_rebuild(&self, live: u32) {
        let before = self.store.dump(ROOMS, live).await.unwrap();
        let rebuilt = rebuild::rebuild(
            self.store.clone(),
            self.journal(),
            Arc::new(RoomsProjection),
            500,
            |_| {},
        )
        .await
        .unwrap();
        let after = self.store.dump(ROOMS, rebuilt.version).await.unwrap();
        assert!(
            before.messages.len() + before.rooms.len() > 0,
            "the views hold something to compare"
        );
        assert_eq!(after, before, "live views = a rebuild from the journal");
    }
}

pub fn created(name: &str) -> RoomEvent {
    RoomEvent::Created {
        name: name.into(),
        owner: "alice".into(),
    }
}

pub fn posted(id: &str, body: &str) -> RoomEvent {
    RoomEvent::MessagePosted {
        message_id: id.into(),
        author: "alice".into(),
        body: body.into(),
    }
}

/// A schema of its own in the test database, dropped afterwards. Its store connects under an
/// application name of its own, so a test can find (and terminate) exactly its connections.
pub struct PgSchema {
    url: String,
    pub name: String,
    pub application_name: String,
    /// The read store's URL: this schema, this application name.
    pub store_url: String,
}

impl PgSchema {
    pub fn test_url() -> String {
        std::env::var("KIROKU_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "KIROKU_TEST_POSTGRES_URL is not set: these tests need PostgreSQL. Run them with \
                 `bash deploy/local/test.sh`, or `export \"$(bash deploy/local/postgres.sh)\"` \
                 first"
            )
        })
    }

    pub async fn create() -> Self {
        let url = Self::test_url();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = Self::connect(&url).await;
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        let application_name = format!("kiroku-{name}");
        let sep = if url.contains('?') { '&' } else { '?' };
        let store_url = format!(
            "{url}{sep}options=-c%20search_path%3D{name}&application_name={application_name}"
        );
        Self {
            url,
            name,
            application_name,
            store_url,
        }
    }

    /// A connection of the test's own (not the store's), e.g. to take locks or end sessions.
    pub async fn admin(&self) -> tokio_postgres::Client {
        Self::connect(&self.url).await
    }

    async fn connect(url: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL is up");
        tokio::spawn(conn);
        client
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop's cleanup must not need the test's runtime (it is shutting down).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
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
