//! Test harness: every test gets its own PostgreSQL database (migrated) and
//! its own AMQP prefix, and both are removed when the [`TestEnv`] drops, so
//! tests run in parallel against one server and leave nothing behind.
//!
//! `RDEV_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! names the server; `AMQP_URL` the broker.

use crate::config::{AmqpConfig, DbConfig, Secret};
use crate::db::{self, Pool};
use crate::mq::{self, Topology};

/// One test's database and broker namespace.
pub struct TestEnv {
    /// Points at the test's own database.
    pub db: DbConfig,
    /// Uses the test's own prefix.
    pub amqp: AmqpConfig,
    /// A pool on the test database.
    pub pool: Pool,
    /// Names under the test's prefix.
    pub topology: Topology,
    admin_url: String,
    db_name: String,
}

fn admin_url() -> String {
    std::env::var("RDEV_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Replaces the database name (the path) of a PostgreSQL URL.
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestEnv {
    /// Creates and migrates a fresh database and picks a fresh prefix.
    ///
    /// # Panics
    /// When PostgreSQL is unreachable: tests cannot run without it.
    pub async fn new() -> Self {
        let id = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let db_name = format!("rdev_test_{}", &id[..16]);
        let admin_url = admin_url();
        let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must be running for tests (scripts/services.sh starts it)");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await
            .expect("create test database");
        let db = DbConfig {
            database_url: Secret::new(with_db(&admin_url, &db_name)),
            migrate_database_url: None,
            pool_size: 8,
            statement_timeout_s: 30,
        };
        let pool = db::pool(&db).expect("test pool");
        db::migrate(&pool).await.expect("migrate test database");
        let prefix = format!("t{}", &id[..12]);
        Self {
            amqp: AmqpConfig {
                amqp_url: Secret::new(amqp_url()),
                prefix: prefix.clone(),
                ca_file: None,
            },
            topology: Topology::new(prefix),
            db,
            pool,
            admin_url,
            db_name,
        }
    }

    /// Inserts a bare local project named `name` straight into the
    /// database (no API, no audit) and returns its id.
    ///
    /// # Panics
    /// When the insert fails (a name taken, the database gone).
    pub async fn insert_project(&self, name: &str) -> uuid::Uuid {
        let id = uuid::Uuid::now_v7();
        self.pool
            .get()
            .await
            .expect("db")
            .execute(
                "INSERT INTO projects (id, name, executor, default_timeout_s, max_output_bytes) \
                 VALUES ($1, $2, '{\"kind\": \"local\"}', 60, 1048576)",
                &[&id, &name],
            )
            .await
            .expect("insert project");
        id
    }

    /// Inserts `n` `true` commands of `project` in `status` straight into
    /// the database (owned by `worker` when given) and returns their ids.
    ///
    /// # Panics
    /// When the insert fails.
    pub async fn insert_commands(
        &self,
        project: uuid::Uuid,
        n: usize,
        status: &str,
        worker: Option<&str>,
    ) -> Vec<uuid::Uuid> {
        let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
        self.pool
            .get()
            .await
            .expect("db")
            .execute(
                "INSERT INTO commands (id, project_id, command, priority, status, timeout_s, worker_id) \
                 SELECT id, $2, 'true', 5, $3, 60, $4 FROM unnest($1::uuid[]) AS id",
                &[&ids, &project, &status, &worker],
            )
            .await
            .expect("insert commands");
        ids
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let db_name = self.db_name.clone();
        let amqp = self.amqp.clone();
        let topology = self.topology.clone();
        self.pool.close();
        // Drop runs inside the test's runtime; clean up on a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                        .await;
                }
                if let Ok(conn) = mq::connect(&amqp, "rdev-test-cleanup").await
                    && let Ok(ch) = conn.create_channel().await
                {
                    for q in [
                        topology.commands_queue(),
                        topology.commands_delay_queue(),
                        topology.webhooks_queue(),
                    ] {
                        let _ = ch.queue_delete(q.into(), Default::default()).await;
                    }
                    for x in [
                        topology.commands_exchange(),
                        topology.events_exchange(),
                        topology.control_exchange(),
                        topology.output_exchange(),
                    ] {
                        let _ = ch.exchange_delete(x.into(), Default::default()).await;
                    }
                    let _ = conn.close(200, "bye".into()).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

#[cfg(test)]
mod tests {
    use super::with_db;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_db("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(with_db("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(
            with_db("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}

/// Spans of every service in this test process, collected in memory.
pub mod traces {
    use std::sync::OnceLock;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    static EXPORTER: OnceLock<Option<(InMemorySpanExporter, SdkTracerProvider)>> = OnceLock::new();

    /// Installs (once) a global subscriber whose spans go to an in-memory
    /// exporter; `None` if another subscriber was installed first.
    pub fn install() -> Option<&'static InMemorySpanExporter> {
        EXPORTER
            .get_or_init(|| {
                opentelemetry::global::set_text_map_propagator(
                    opentelemetry_sdk::propagation::TraceContextPropagator::new(),
                );
                let exporter = InMemorySpanExporter::default();
                let provider = SdkTracerProvider::builder()
                    .with_simple_exporter(exporter.clone())
                    .with_resource(crate::telemetry::resource("rdev-tests"))
                    .build();
                let layer =
                    tracing_opentelemetry::layer().with_tracer(provider.tracer("rdev-tests"));
                let filter =
                    tracing_subscriber::EnvFilter::new("info,lapin=warn,tokio_postgres=warn");
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .try_init()
                    .ok()
                    .map(|()| (exporter, provider))
            })
            .as_ref()
            .map(|(e, _)| e)
    }

    /// Finished spans so far.
    pub fn spans(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
        exporter.get_finished_spans().unwrap_or_default()
    }
}
