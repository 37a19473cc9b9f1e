//! TLS to PostgreSQL and RabbitMQ, against a CA made in the test.
//!
//! PostgreSQL: a private server (initdb + pg_ctl as the `postgres` OS user,
//! on a free port, in a temporary directory) with `ssl=on`, stopped and
//! removed when the test ends; the shared server is never touched.
//! RabbitMQ: starting a second broker node per test is slow and fragile
//! here (Erlang node names, cookies, epmd), so the test puts a TLS
//! terminator (rustls) in front of the shared broker's plain port: the
//! client side is exactly what production runs (`amqps://`, the CA from
//! `RDEV_AMQP_CA_FILE`, the host name checked), and the AMQP session behind
//! it is the real broker's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rdev_shared::config::{AmqpConfig, DbConfig, Secret};

/// A CA and a certificate it signed for `localhost`.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn make_pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "rdev test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("server cert");
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn tempdir(what: &str) -> PathBuf {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let dir = std::env::temp_dir().join(format!("rdev-{what}-{}", &id[id.len() - 12..]));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// Runs a command as the `postgres` OS user; panics with its output on failure.
fn as_postgres(args: &[&str]) {
    let out = rdev_tests::output_std(
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args),
    )
    .expect("runuser");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private PostgreSQL with TLS on; stopped and removed on drop.
struct PrivatePg {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl PrivatePg {
    fn start(pki: &Pki) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").is_file())
            .max()
            .expect("initdb");
        let dir = tempdir("tls-pg");
        let data = dir.join("data");
        std::fs::write(dir.join("server.crt"), &pki.cert_pem).expect("cert");
        std::fs::write(dir.join("server.key"), &pki.key_pem).expect("key");
        let status = rdev_tests::spawn_std(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir),
        )
        .and_then(|mut c| c.wait())
        .expect("chown");
        assert!(status.success());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("key mode");
        let s = |p: &Path| p.to_string_lossy().into_owned();
        as_postgres(&[
            &s(&bin.join("initdb")),
            "-D",
            &s(&data),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        let port = free_port();
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={d} -c ssl=on \
             -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key",
            d = s(&dir)
        );
        let pg = Self { dir, bin, port };
        as_postgres(&[
            &s(&pg.bin.join("pg_ctl")),
            "-D",
            &s(&data),
            "-l",
            &s(&pg.dir.join("log")),
            "-w",
            "-o",
            &opts,
            "start",
        ]);
        pg
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = rdev_tests::output_std(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"]),
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ssl_in_use(url: &str) -> Result<bool, String> {
    let pool = rdev_shared::db::pool(&DbConfig {
        database_url: Secret::new(url),
        migrate_database_url: None,
        pool_size: 1,
        statement_timeout_s: 30,
    })
    .map_err(|e| e.to_string())?;
    let client = pool.get().await.map_err(|e| format!("{e:?}"))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn postgres_connections_verify_the_server_against_a_ca_file() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = make_pki();
    let other = make_pki();
    let pg = PrivatePg::start(&pki);
    let ca = pg.dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("ca");
    let wrong = pg.dir.join("other-ca.pem");
    std::fs::write(&wrong, &other.ca_pem).expect("other ca");
    let url = |host: &str, q: &str| format!("postgres://postgres@{host}:{}/postgres?{q}", pg.port);
    let full = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    assert_eq!(ssl_in_use(&url("localhost", &full)).await, Ok(true));
    // The whole stack over it: migrations, then a query through a pool.
    let pool = rdev_shared::db::pool(&DbConfig {
        database_url: Secret::new(url("localhost", &full)),
        migrate_database_url: None,
        pool_size: 2,
        statement_timeout_s: 30,
    })
    .expect("pool");
    rdev_shared::db::migrate(&pool)
        .await
        .expect("migrations over TLS");
    // A certificate from another CA is refused.
    let refused = ssl_in_use(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", wrong.display()),
    ))
    .await;
    assert!(refused.is_err(), "{refused:?}");
    // verify-full checks the name (the certificate names localhost only);
    // verify-ca does not.
    assert!(ssl_in_use(&url("127.0.0.1", &full)).await.is_err());
    let ca_only = format!("sslmode=verify-ca&sslrootcert={}", ca.display());
    assert_eq!(ssl_in_use(&url("127.0.0.1", &ca_only)).await, Ok(true));
    // require encrypts without a CA; disable does not.
    assert_eq!(
        ssl_in_use(&url("127.0.0.1", "sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(
        ssl_in_use(&url("127.0.0.1", "sslmode=disable")).await,
        Ok(false)
    );
}

/// A TLS terminator on 127.0.0.1 in front of the broker's plain port.
async fn tls_terminator(pki: &Pki, connections: Arc<AtomicUsize>) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let broker = std::env::var("AMQP_URL")
        .ok()
        .and_then(|u| {
            let rest = u.split_once('@')?.1;
            Some(rest.split('/').next()?.to_owned())
        })
        .unwrap_or_else(|| "127.0.0.1:5672".into());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, broker, connections) =
                (acceptor.clone(), broker.clone(), connections.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut plain) = tokio::net::TcpStream::connect(&broker).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn amqps_connections_verify_the_broker_against_a_ca_file() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let env = rdev_shared::test_support::TestEnv::new().await;
    let pki = make_pki();
    let tls_connections = Arc::new(AtomicUsize::new(0));
    let port = tls_terminator(&pki, tls_connections.clone()).await;
    let dir = tempdir("tls-amqp");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("ca");
    let cfg = |host: &str, ca_file: Option<PathBuf>| AmqpConfig {
        amqp_url: Secret::new(format!("amqps://guest:guest@{host}:{port}/%2f")),
        prefix: env.amqp.prefix.clone(),
        ca_file,
    };
    // A publish with a confirm, through TLS, to the real broker.
    let publisher = rdev_shared::mq::Publisher::new(cfg("localhost", Some(ca.clone())), "tls-test");
    let message = env.topology.run_message(uuid::Uuid::now_v7(), 5);
    publisher
        .publish_confirmed(&message)
        .await
        .expect("published over amqps");
    assert!(tls_connections.load(Ordering::SeqCst) >= 1);
    // Without the CA, or for a name the certificate does not carry, no connection.
    assert!(
        rdev_shared::mq::connect(&cfg("localhost", None), "no-ca")
            .await
            .is_err()
    );
    assert!(
        rdev_shared::mq::connect(&cfg("127.0.0.1", Some(ca)), "wrong-name")
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
