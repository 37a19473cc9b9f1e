//! The private PostgreSQL and RabbitMQ servers the chaos run starts, restarts
//! and stops (never the machine's shared ones).

use std::path::{Path, PathBuf};

/// A port nothing listens on, for a server or service to bind later.
///
/// Picked below the kernel's ephemeral range: a port from that range (what
/// binding `:0` gives) can be taken between this check and the service's
/// own bind by any outgoing connection of the processes starting meanwhile
/// (an API instance once failed to start so, "Address already in use"),
/// while one below it is only ever taken by an explicit bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_start();
    if high <= LOW + 1_000 {
        // An unusual range: fall back to the kernel's choice.
        return std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
    }
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for _ in 0..10_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + seed.wrapping_add(n.wrapping_mul(7_919)) % (high - LOW);
        let port = u16::try_from(port).expect("below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {high}");
}

/// The first port of the kernel's ephemeral range (32768 when unknown).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

// ---- the private PostgreSQL ------------------------------------------------

pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

impl Postgres {
    pub fn start(root: &Path) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL binaries in /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").is_file())
            .expect("initdb");
        let dir = root.join("pg");
        std::fs::create_dir_all(&dir).expect("pg dir");
        run(std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir));
        run(std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(dir.join("data")));
        let pg = Self {
            bin,
            dir,
            port: free_port(),
        };
        pg.ctl(&["start", "-w", "-t", "60"]);
        pg
    }

    pub fn ctl(&self, args: &[&str]) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
            self.port,
            self.dir.display()
        );
        run(std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .args(args));
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["stop", "-m", "immediate"])
            .output();
    }
}

// ---- the private RabbitMQ node ---------------------------------------------

pub struct Rabbit {
    dir: PathBuf,
    node: String,
    pub port: u16,
    dist_port: u16,
}

impl Rabbit {
    pub fn start(root: &Path) -> Self {
        let dir = root.join("rabbit");
        std::fs::create_dir_all(&dir).expect("rabbit dir");
        let port = free_port();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .expect("conf");
        run(std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir));
        let r = Self {
            node: format!("chaos{port}@localhost"),
            dist_port: free_port(),
            dir,
            port,
        };
        r.up();
        r
    }

    fn env(&self, cmd: &mut std::process::Command) {
        let d = &self.dir;
        cmd.env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"));
    }

    pub fn up(&self) {
        let mut c = std::process::Command::new("rabbitmq-server");
        self.env(&mut c);
        run(c.arg("-detached"));
        let mut w = std::process::Command::new("rabbitmqctl");
        self.env(&mut w);
        run(w
            .args(["-n", &self.node, "wait"])
            .arg(self.dir.join("pid"))
            .args(["--timeout", "90"]));
    }

    pub fn down(&self) {
        let mut c = std::process::Command::new("rabbitmqctl");
        self.env(&mut c);
        let _ = c.args(["-n", &self.node, "stop"]).output();
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.down();
    }
}
