//! Least-privilege database roles: migrations as the owner
//! (`RDEV_MIGRATE_DATABASE_URL`), the services as a DML-only role that
//! cannot touch the audit log's append-only trigger.

use rdev_api::config::ApiConfig;
use rdev_shared::config::{DbConfig, Secret};
use rdev_shared::db::keys;
use rdev_shared::domain::Scope;
use rdev_shared::secret;
use rdev_shared::test_support::with_db;
use serde_json::json;
use tokio_postgres::error::SqlState;

use rdev_tests::{Options, spawn_app_with};

fn admin_url() -> String {
    std::env::var("RDEV_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    tokio::spawn(conn);
    client
}

/// `sql` fails for `client` with `code`.
async fn refused(client: &tokio_postgres::Client, sql: &str, code: SqlState) {
    let e = client.batch_execute(sql).await.expect_err(sql);
    assert_eq!(e.code(), Some(&code), "{sql}: {e}");
}

/// `postgres://user:password@host…/db` from the admin URL.
fn as_user(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

#[tokio::test]
async fn the_services_run_as_a_dml_only_role_that_cannot_drop_the_audit_trigger() {
    // The AMQP prefix and key ring of an ordinary test app.
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let admin = connect(&admin_url()).await;
    // The group role is cluster-wide and may already exist (other runs).
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE rdev_runtime NOLOGIN; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        )
        .await
        .expect("group role");
    let id = uuid::Uuid::now_v7().simple().to_string();
    let tag = &id[id.len() - 12..];
    let (user, db) = (format!("rdev_rt_{tag}"), format!("rdev_test_roles_{tag}"));
    admin
        .batch_execute(&format!(
            "CREATE ROLE {user} LOGIN PASSWORD 'pw-{tag}' IN ROLE rdev_runtime"
        ))
        .await
        .expect("role");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("database");
    let owner_url = with_db(&admin_url(), &db);
    let runtime_url = as_user(&owner_url, &user, &format!("pw-{tag}"));

    // The API migrates as the owner, then serves as the runtime role.
    let cfg = ApiConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ops_listen: "127.0.0.1:0".parse().expect("addr"),
        migrate: true,
        ..ApiConfig::local(
            DbConfig {
                database_url: Secret::new(runtime_url.clone()),
                migrate_database_url: Some(Secret::new(owner_url.clone())),
                pool_size: 4,
                statement_timeout_s: 30,
            },
            app.env.amqp.clone(),
        )
    };
    let server = rdev_api::start(cfg, rdev_shared::lifecycle::CancellationToken::new())
        .await
        .expect("the API starts as the runtime role");
    let base = format!("http://{}", server.addr);
    let owner_pool = rdev_shared::db::pool(&DbConfig {
        database_url: Secret::new(owner_url.clone()),
        migrate_database_url: None,
        pool_size: 1,
        statement_timeout_s: 30,
    })
    .expect("owner pool");
    let owner = owner_pool.get().await.expect("owner");
    let generated = secret::generate_key();
    keys::insert(
        &owner,
        &keys::NewKey {
            name: "admin".into(),
            prefix: generated.prefix.clone(),
            hash: generated.hash,
            scopes: vec![Scope::Admin],
            project_ids: None,
        },
    )
    .await
    .expect("admin key");
    let r = app
        .http
        .post(format!("{base}/v1/projects"))
        .bearer_auth(&generated.secret)
        .json(&json!({"name": "p"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201, "the runtime role writes rows");

    let runtime = connect(&runtime_url).await;
    for ddl in [
        "DROP TRIGGER audit_log_append_only ON audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
        "DROP TABLE audit_log",
        "CREATE TABLE x (id int)",
    ] {
        refused(&runtime, ddl, SqlState::INSUFFICIENT_PRIVILEGE).await;
    }
    let e = runtime
        .batch_execute("UPDATE audit_log SET actor = 'someone else'")
        .await
        .expect_err("append-only");
    assert!(
        e.to_string().contains("append-only") || format!("{e:?}").contains("append-only"),
        "{e:?}"
    );
    // Retention may still delete.
    runtime
        .batch_execute("DELETE FROM audit_log WHERE at < now() - interval '1 day'")
        .await
        .expect("retention deletes");
    // Projects and keys are never deleted (soft delete, revoke): commands
    // name them without a foreign key (V17), so no row of either may go.
    for delete in [
        "DELETE FROM projects WHERE deleted_at IS NOT NULL",
        "DELETE FROM api_keys WHERE revoked_at IS NOT NULL",
    ] {
        refused(&runtime, delete, SqlState::RESTRICT_VIOLATION).await;
    }

    server.task.abort();
    drop((runtime, owner));
    // One statement per call: in one query string the two would run as one
    // transaction block, which DROP DATABASE refuses (and both were left).
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .expect("drop the test database");
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {user}"))
        .await
        .expect("drop the test role");
}
