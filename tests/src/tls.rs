//! Real TLS endpoints for the TLS tests (issue 15), each private to the test
//! that starts it and stopped when dropped:
//! - [`Pki`]: a CA, a server certificate for `127.0.0.1` and `localhost`
//!   signed by it, and an unrelated CA, made with the `openssl` CLI;
//! - [`PrivateMariaDb`]: a `mariadbd` of its own that requires TLS
//!   (`require_secure_transport`), root without a password over TCP;
//! - [`PrivateRabbitMq`]: a RabbitMQ node of its own whose only listener is
//!   TLS (guest/guest, from loopback);
//! - [`PrivateTansu`] behind a [`TlsTerminator`]: tansu accepts no TLS, so a
//!   rustls terminator in front of it is the broker's TLS endpoint, and tansu
//!   advertises the terminator's address;
//! - [`acceptor`]: the server side of rustls with the test certificate, for
//!   an https JWKS ([`crate::issuer::TestIssuer::start_https`]).
//!
//! A missing tool (`openssl`, `mariadbd`, `rabbitmq-server`, `tansu`) fails
//! the test that needs it: `scripts/test-env.sh` installs them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A folder of the test's own, removed on drop unless the test failed (its
/// server logs then say why).
pub struct Scratch {
    /// The folder.
    pub path: PathBuf,
}

impl Scratch {
    /// A fresh folder under the system's temporary folder.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(crate::unique(&format!("dialstack-{prefix}-")));
        std::fs::create_dir_all(&path).expect("create a scratch folder");
        Self { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs `cmd` to completion; panics with its output when it fails or is missing.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first of `candidates` that exists, else `name` found on `PATH`.
fn find_tool(name: &str, candidates: &[PathBuf]) -> PathBuf {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    candidates
        .iter()
        .chain(on_path.iter())
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("{name} is missing (looked in {candidates:?} and PATH): run scripts/test-env.sh")
        })
}

/// A CA, a server certificate it signed, and a CA that signed nothing here.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (PEM): what clients trust.
    pub ca: PathBuf,
    /// The server's certificate (PEM), for `127.0.0.1` and `localhost`.
    pub cert: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// An unrelated CA (PEM): trusting it instead must fail.
    pub other_ca: PathBuf,
}

impl Pki {
    /// Generates the files into `dir` with the `openssl` CLI (RSA 2048,
    /// valid two days).
    pub fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pki folder");
        let openssl = find_tool("openssl", &[]);
        let file = |name: &str| dir.join(name);
        let ca = |name: &str, cn: &str| {
            run(
                Command::new(&openssl)
                    .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"])
                    .args(["-days", "2", "-subj", &format!("/CN={cn}")])
                    .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                    .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                    .arg("-keyout")
                    .arg(file(&format!("{name}.key")))
                    .arg("-out")
                    .arg(file(&format!("{name}.pem"))),
                "openssl: make a CA",
            );
        };
        ca("ca", "dialstack test CA");
        ca("other-ca", "dialstack unrelated CA");
        run(
            Command::new(&openssl)
                .args([
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                ])
                .arg("-keyout")
                .arg(file("server.key"))
                .arg("-out")
                .arg(file("server.csr")),
            "openssl: make the server key",
        );
        std::fs::write(
            file("server.ext"),
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("write the extensions");
        run(
            Command::new(&openssl)
                .args(["x509", "-req", "-sha256", "-days", "2", "-CAcreateserial"])
                .arg("-in")
                .arg(file("server.csr"))
                .arg("-CA")
                .arg(file("ca.pem"))
                .arg("-CAkey")
                .arg(file("ca.key"))
                .arg("-extfile")
                .arg(file("server.ext"))
                .arg("-out")
                .arg(file("server.pem")),
            "openssl: sign the server certificate",
        );
        Self {
            ca: file("ca.pem"),
            cert: file("server.pem"),
            key: file("server.key"),
            other_ca: file("other-ca.pem"),
        }
    }
}

/// The server side of rustls with `pki`'s server certificate.
pub fn acceptor(pki: &Pki) -> TlsAcceptor {
    let certs = CertificateDer::pem_file_iter(&pki.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .expect("server certificate");
    let key = PrivateKeyDer::from_pem_file(&pki.key).expect("server key");
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server TLS configuration");
    TlsAcceptor::from(Arc::new(config))
}

/// A server process of the test's own: killed (and reaped) on drop.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("server log");
        let err = out.try_clone().expect("server log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { name, child, log }
    }

    /// Waits until `127.0.0.1:port` accepts and `ready` holds, failing fast
    /// when the process exits.
    async fn wait_ready(&mut self, port: u16, within: Duration, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before it was ready; its log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log)
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() && ready() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not ready on port {port} within {within:?}; its log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A MariaDB server of the test's own on a free port that refuses
/// connections without TLS (`--require-secure-transport=ON`). Its root user
/// has no password.
pub struct PrivateMariaDb {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    _server: Server,
}

impl PrivateMariaDb {
    /// Initialises a data folder under `dir` and starts `mariadbd` with
    /// `pki`'s server certificate.
    pub async fn start(pki: &Pki, dir: &Path) -> Self {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("data folder");
        let root = running_as_root();
        let mut install = Command::new(find_tool(
            "mariadb-install-db",
            &[PathBuf::from("/usr/bin/mariadb-install-db")],
        ));
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db");
        if root {
            install.arg("--user=root");
        }
        run(&mut install, "mariadb-install-db");
        let port = crate::free_tcp_port();
        let mut cmd = Command::new(find_tool(
            "mariadbd",
            &[PathBuf::from("/usr/sbin/mariadbd")],
        ));
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg("--skip-log-bin")
            .arg("--innodb-buffer-pool-size=16M")
            .arg(format!("--ssl-ca={}", pki.ca.display()))
            .arg(format!("--ssl-cert={}", pki.cert.display()))
            .arg(format!("--ssl-key={}", pki.key.display()))
            .arg("--require-secure-transport=ON");
        if root {
            cmd.arg("--user=root");
        }
        let mut server = Server::spawn("mariadbd", &mut cmd, dir.join("mariadbd.log"));
        server
            .wait_ready(port, Duration::from_secs(60), || true)
            .await;
        Self {
            port,
            _server: server,
        }
    }

    /// `mysql://root@127.0.0.1:<port>/<database>?<params>`.
    pub fn url(&self, database: &str, params: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}?{params}", self.port)
    }
}

/// A RabbitMQ node of the test's own whose only listener is TLS on a free
/// port, without plugins.
pub struct PrivateRabbitMq {
    /// The TLS (amqps) port on 127.0.0.1.
    pub port: u16,
    _server: Server,
}

impl PrivateRabbitMq {
    /// Starts a node named `dstls…@localhost` with its database, logs and
    /// Erlang cookie under `dir`, serving `pki`'s server certificate.
    pub async fn start(pki: &Pki, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("rabbitmq folder");
        let port = crate::free_tcp_port();
        let config = dir.join("rabbitmq.conf");
        std::fs::write(
            &config,
            format!(
                "listeners.tcp = none\n\
                 listeners.ssl.1 = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                pki.ca.display(),
                pki.cert.display(),
                pki.key.display()
            ),
        )
        .expect("rabbitmq.conf");
        let plugins = dir.join("enabled_plugins");
        std::fs::write(&plugins, "[].\n").expect("enabled_plugins");
        // Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user;
        // the script behind it runs the node as whoever calls it.
        let bin = find_tool(
            "rabbitmq-server",
            &[PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server")],
        );
        let mut cmd = Command::new(bin);
        cmd.current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir)
            .env("LANG", "C.UTF-8")
            // Runs the Erlang VM in place of the script: killing the child
            // stops the node.
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .env(
                "RABBITMQ_NODENAME",
                format!("{}@localhost", crate::unique("dstls")),
            )
            .env("RABBITMQ_NODE_PORT", crate::free_tcp_port().to_string())
            .env("RABBITMQ_DIST_PORT", crate::free_tcp_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"));
        let log = dir.join("rabbitmq.log");
        let mut server = Server::spawn("rabbitmq-server", &mut cmd, log.clone());
        server
            .wait_ready(port, Duration::from_secs(120), || {
                std::fs::read_to_string(&log)
                    .map(|l| l.contains("Server startup complete"))
                    .unwrap_or(false)
            })
            .await;
        Self {
            port,
            _server: server,
        }
    }
}

/// A tansu broker of the test's own (in-memory storage) that advertises
/// another address, the [`TlsTerminator`] in front of it.
pub struct PrivateTansu {
    /// Its plaintext port on 127.0.0.1.
    pub port: u16,
    _server: Server,
}

impl PrivateTansu {
    /// Starts `tansu broker` on `port`, advertising `127.0.0.1:advertised`.
    pub async fn start(port: u16, advertised: u16, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("tansu folder");
        let tools = std::env::var_os("DIALSTACK_TOOLS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/dialstack/tools"))
            })
            .unwrap_or_default();
        let mut cmd = Command::new(find_tool("tansu", &[tools.join("bin/tansu")]));
        cmd.current_dir(dir)
            .arg("broker")
            .args(["--storage-engine", "memory://tansu/"])
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{advertised}"));
        let mut server = Server::spawn("tansu", &mut cmd, dir.join("tansu.log"));
        server
            .wait_ready(port, Duration::from_secs(60), || true)
            .await;
        Self {
            port,
            _server: server,
        }
    }
}

/// Accepts TLS on a free port and forwards the plaintext to `upstream`.
pub struct TlsTerminator {
    /// The TLS port on 127.0.0.1.
    pub port: u16,
    /// The accept loop; its connections are aborted with it.
    task: JoinHandle<()>,
}

impl TlsTerminator {
    /// Starts accepting with `acceptor`'s certificate.
    pub async fn start(acceptor: TlsAcceptor, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the terminator");
        let port = listener.local_addr().expect("terminator address").port();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { return };
                        let acceptor = acceptor.clone();
                        connections.spawn(async move {
                            // A client that refuses the certificate ends here.
                            let Ok(mut tls) = acceptor.accept(inbound).await else { return };
                            let Ok(mut out) = TcpStream::connect(upstream).await else { return };
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut out).await;
                        });
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Self { port, task }
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
