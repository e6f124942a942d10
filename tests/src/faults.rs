//! Private dependencies that a fault test may stop and start again without
//! disturbing the shared ones other tests use at the same time: a MariaDB
//! server, a RabbitMQ node and a tansu (Kafka protocol) broker, each on free
//! loopback ports with its data in a scratch folder of its own, so that a
//! restart keeps what was committed (tansu on S3 storage, a private
//! `s3s-fs`).
//! Their logs go to the test's log folder; each is killed, with its whole
//! process group, when dropped, and its scratch folder removed.
//!
//! # Layout
//! - [`Daemon`]: one restartable process and how to tell that it answers
//! - [`MariaDb`], [`RabbitMq`], [`Tansu`]: the three dependencies

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::procs::log_dir;
use crate::{free_tcp_port, unique};

/// How a [`Daemon`] shows that it serves clients.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// The server speaks first once it accepts clients (MySQL's greeting).
    Greeting,
    /// RabbitMQ answers the AMQP 0-9-1 protocol header.
    Amqp,
    /// A TCP connection is accepted.
    Connect,
}

impl Probe {
    async fn answers(self, port: u16) -> bool {
        let attempt = async {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            match self {
                Probe::Connect => return Some(()),
                Probe::Amqp => s.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?,
                Probe::Greeting => {}
            }
            let mut byte = [0u8; 1];
            (s.read(&mut byte).await.ok()? == 1).then_some(())
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), attempt).await,
            Ok(Some(()))
        )
    }
}

/// A server process that can be stopped and started again on the same
/// port and data. Killed, with its process group, when dropped.
pub struct Daemon {
    /// What it is (log file name and messages).
    pub name: &'static str,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    log: PathBuf,
    probe: Probe,
    child: Option<Child>,
    starts: u32,
}

impl Daemon {
    fn spawn(&mut self) {
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log file");
        use std::io::Write;
        let _ = writeln!(log, "--- {} start {} ---", self.name, self.starts);
        let err = log.try_clone().expect("daemon log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().cloned())
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own group: a drop kills helper processes with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({}): {e}",
                    self.name,
                    self.program.display()
                )
            });
        self.child = Some(child);
    }

    /// Starts it and waits until it answers; returns when it did.
    pub async fn start(&mut self) -> Instant {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.probe.answers(self.port).await {
                return Instant::now();
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited at start ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer on port {} within 120 s; see {}",
                self.name,
                self.port,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops it with SIGTERM (a clean shutdown that keeps its data), waits
    /// for the exit and for the port to refuse clients; returns when it was
    /// gone.
    pub async fn stop(&mut self) -> Instant {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("a live child has a pid");
        signal("-TERM", &pid.to_string());
        if tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .is_err()
        {
            signal("-KILL", &pid.to_string());
            let _ = child.wait().await;
            panic!("{} did not stop within 60 s of SIGTERM", self.name);
        }
        // Whatever it left of its group (none on a clean exit).
        signal("-KILL", &format!("-{pid}"));
        while self.probe.answers(self.port).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Instant::now()
    }

    /// Stops it, keeps it down for `outage`, starts it again on the same
    /// port and data; returns when it was gone and when it answered again.
    pub async fn restart_after(&mut self, outage: Duration) -> (Instant, Instant) {
        let gone = self.stop().await;
        tokio::time::sleep_until((gone + outage).into()).await;
        let back = self.start().await;
        (gone, back)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            signal("-KILL", &format!("-{pid}"));
            signal("-KILL", &pid.to_string());
        }
    }
}

fn signal(sig: &str, target: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A folder of the test's own under the system's temporary folder,
/// removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(&format!("dialstack-fault-{what}-")));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `name` on PATH, else the first of `elsewhere` that exists.
fn program(name: &str, elsewhere: &[&str]) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .chain(elsewhere.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A private MariaDB server (root, empty password, over TCP).
pub struct MariaDb {
    /// The server process.
    pub daemon: Daemon,
    // Dropped after the daemon: the server is gone before its data.
    _dir: Scratch,
}

impl MariaDb {
    /// Creates a fresh data folder and starts the server on a free port.
    pub async fn start(test: &str) -> Self {
        let dir = Scratch::new("mariadb");
        let logs = log_dir(test);
        let data = dir.0.join("data");
        let install = Command::new(program(
            "mariadb-install-db",
            &["/usr/bin/mariadb-install-db"],
        ))
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args([
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("mariadb-install-db (Debian's mariadb-server; scripts/test-env.sh installs it): {e}")
        });
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
        let port = free_tcp_port();
        let mut daemon = Daemon {
            name: "mariadb",
            port,
            program: program("mariadbd", &["/usr/sbin/mariadbd"]),
            args: vec![
                // Nothing from /etc/mysql: the shared server's settings
                // (port, socket, data) are not ours.
                "--no-defaults".into(),
                format!("--datadir={}", data.display()),
                format!("--port={port}"),
                "--bind-address=127.0.0.1".into(),
                format!("--socket={}", dir.0.join("mysqld.sock").display()),
                format!("--pid-file={}", dir.0.join("mysqld.pid").display()),
                "--user=root".into(),
                "--skip-name-resolve".into(),
                "--max-connections=500".into(),
                format!("--log-error={}", logs.join("mariadb-error.log").display()),
            ],
            env: vec![],
            cwd: dir.0.clone(),
            log: logs.join("mariadb.log"),
            probe: Probe::Greeting,
            child: None,
            starts: 0,
        };
        daemon.start().await;
        Self { daemon, _dir: dir }
    }

    /// The server's URL, without a database.
    pub fn server_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.daemon.port)
    }
}

/// A private RabbitMQ node (guest/guest from loopback, no plugins), its
/// queues kept in its own folder across restarts.
pub struct RabbitMq {
    /// The node's process.
    pub daemon: Daemon,
    /// Its Erlang node name.
    pub node: String,
    _dir: Scratch,
}

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

impl RabbitMq {
    /// Starts a fresh node on free ports.
    pub async fn start(test: &str) -> Self {
        let dir = Scratch::new("rabbitmq");
        let logs = log_dir(test);
        let port = free_tcp_port();
        let node = format!("{}@localhost", unique("fault"));
        let home = dir.0.join("home");
        for d in ["home", "mnesia", "log", "plugins-expand"] {
            std::fs::create_dir_all(dir.0.join(d)).expect("rabbitmq folders");
        }
        std::fs::write(dir.0.join("enabled_plugins"), "[].\n").expect("plugins file");
        std::fs::write(dir.0.join("rabbitmq-env.conf"), "").expect("env file");
        std::fs::write(
            dir.0.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .expect("config file");
        let path = |p: &str| dir.0.join(p).display().to_string();
        let env = vec![
            // The node and its command line tool share this HOME, so they
            // share the Erlang cookie the node creates there.
            ("HOME".to_owned(), home.display().to_string()),
            ("RABBITMQ_NODENAME".to_owned(), node.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS".to_owned(), "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT".to_owned(), port.to_string()),
            ("RABBITMQ_DIST_PORT".to_owned(), free_tcp_port().to_string()),
            ("RABBITMQ_MNESIA_BASE".to_owned(), path("mnesia")),
            ("RABBITMQ_LOG_BASE".to_owned(), path("log")),
            ("RABBITMQ_PID_FILE".to_owned(), path("rabbitmq.pid")),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".to_owned(),
                path("enabled_plugins"),
            ),
            (
                "RABBITMQ_PLUGINS_EXPAND_DIR".to_owned(),
                path("plugins-expand"),
            ),
            // Not /etc/rabbitmq's: it names the shared node.
            (
                "RABBITMQ_CONF_ENV_FILE".to_owned(),
                path("rabbitmq-env.conf"),
            ),
            ("RABBITMQ_CONFIG_FILE".to_owned(), path("rabbitmq.conf")),
            ("ERL_EPMD_ADDRESS".to_owned(), "127.0.0.1".into()),
        ];
        let server = Path::new(RABBITMQ_BIN).join("rabbitmq-server");
        assert!(
            server.exists(),
            "{} is missing: install rabbitmq-server (scripts/test-env.sh does)",
            server.display()
        );
        let mut daemon = Daemon {
            name: "rabbitmq",
            port,
            program: server,
            args: vec![],
            env,
            cwd: dir.0.clone(),
            log: logs.join("rabbitmq.log"),
            probe: Probe::Amqp,
            child: None,
            starts: 0,
        };
        daemon.start().await;
        Self {
            daemon,
            node,
            _dir: dir,
        }
    }

    /// An events or commands channel URL on this node.
    pub fn url(&self, namespace: &str) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f?namespace={namespace}",
            self.daemon.port
        )
    }

    /// Every queue of the node: name, type and messages in it
    /// (`rabbitmqctl list_queues`).
    pub async fn queues(&self) -> Vec<(String, String, u64)> {
        let out = Command::new(Path::new(RABBITMQ_BIN).join("rabbitmqctl"))
            .args(["-n", &self.node, "-q", "list_queues", "--no-table-headers"])
            .args(["name", "type", "messages"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.daemon.env.iter().cloned())
            .output()
            .await
            .expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl list_queues: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut queues: Vec<(String, String, u64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.to_owned(),
                    f.next()?.to_owned(),
                    f.next()?.parse().ok()?,
                ))
            })
            .collect();
        queues.sort();
        queues
    }
}

/// A private tansu broker whose storage is S3 (its dynostore engine) on a
/// private `s3s-fs` server, so that topics, messages, producer state and
/// committed offsets survive a restart of the broker; the S3 server, its
/// disk, stays up.
pub struct Tansu {
    /// The broker process.
    pub daemon: Daemon,
    _store: Daemon,
    _dir: Scratch,
}

impl Tansu {
    /// Starts a fresh S3 server and a broker on it, on free ports.
    pub async fn start(test: &str) -> Self {
        let dir = Scratch::new("tansu");
        let logs = log_dir(test);
        let bucket = "tansu";
        std::fs::create_dir_all(dir.0.join("s3").join(bucket)).expect("bucket folder");
        let (key, secret) = ("fault-test", "fault-test-secret");
        let s3_port = free_tcp_port();
        let mut store = Daemon {
            name: "s3s-fs",
            port: s3_port,
            // Both built by scripts/test-env.sh into its tools folder.
            program: program("s3s-fs", &[]),
            args: vec![
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                s3_port.to_string(),
                "--access-key".into(),
                key.into(),
                "--secret-key".into(),
                secret.into(),
                dir.0.join("s3").display().to_string(),
            ],
            env: vec![],
            cwd: dir.0.clone(),
            log: logs.join("s3s-fs.log"),
            probe: Probe::Connect,
            child: None,
            starts: 0,
        };
        store.start().await;
        let port = free_tcp_port();
        let listener = format!("tcp://127.0.0.1:{port}");
        let mut daemon = Daemon {
            name: "tansu",
            port,
            program: program("tansu", &[]),
            args: vec![
                "broker".into(),
                "--storage-engine".into(),
                format!("s3://{bucket}/"),
                "--listener-url".into(),
                listener.clone(),
                "--advertised-listener-url".into(),
                listener,
            ],
            env: [
                ("AWS_ACCESS_KEY_ID", key.to_owned()),
                ("AWS_SECRET_ACCESS_KEY", secret.to_owned()),
                ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
                ("AWS_ENDPOINT", format!("http://127.0.0.1:{s3_port}")),
                ("AWS_ALLOW_HTTP", "true".to_owned()),
                ("RUST_LOG", "warn".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            cwd: dir.0.clone(),
            log: logs.join("tansu.log"),
            probe: Probe::Connect,
            child: None,
            starts: 0,
        };
        daemon.start().await;
        Self {
            daemon,
            _store: store,
            _dir: dir,
        }
    }

    /// A commands or events channel URL on this broker.
    pub fn url(&self, namespace: &str) -> String {
        format!(
            "kafka://127.0.0.1:{}?namespace={namespace}&partitions=3",
            self.daemon.port
        )
    }
}
