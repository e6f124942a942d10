//! Helpers for dialstack's tests against real infrastructure. Every helper
//! that needs a dependency fails loudly when it is missing: run
//! `scripts/test-env.sh` (which `scripts/test.sh` does) to bring them up.
//!
//! Addresses come from the environment with loopback defaults:
//! `DIALSTACK_TEST_MYSQL` (`mysql://root@127.0.0.1:3306`),
//! `DIALSTACK_TEST_AMQP` (`amqp://guest:guest@127.0.0.1:5672/%2f`; set by
//! `scripts/test.sh` to the suite's own node, see [`amqp_url`]),
//! `DIALSTACK_TEST_KAFKA` (`127.0.0.1:9092`), `DIALSTACK_TEST_S3`
//! (`http://127.0.0.1:9000`, see [`s3`]).

pub mod campaigns;
pub mod faults;
pub mod issuer;
pub mod procs;
pub mod proxy;
pub mod rtpengine;
pub mod s3;
pub mod smtp;
pub mod tls;
pub mod users;
pub mod wecom;

use std::future::Future;
use std::time::Duration;

/// A short random suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", fastrand::u32(..))
}

/// MariaDB/MySQL server URL without a database.
pub fn mysql_server() -> String {
    std::env::var("DIALSTACK_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// The test MariaDB server's `host:port` as written in [`mysql_server`]
/// (to put a proxy's address in its place) and the address it resolves to.
pub async fn mysql_server_addr() -> (String, std::net::SocketAddr) {
    let server = mysql_server();
    let hostport = server
        .rsplit('@')
        .next()
        .map(|h| h.trim_start_matches("mysql://").trim_end_matches('/'))
        .unwrap_or_default()
        .to_owned();
    let addr = tokio::net::lookup_host(&hostport)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("the test MariaDB server {server} has no address"));
    (hostport, addr)
}

/// A URL of a fresh MariaDB database (created on first connect).
pub fn fresh_mysql_url() -> String {
    format!("{}/{}", mysql_server(), unique("dstest_"))
}

/// A URL of a fresh SQLite database in a temporary folder.
pub fn fresh_sqlite_url() -> String {
    let dir = std::env::temp_dir().join(unique("dialstack-test-"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    format!("sqlite://{}/test.db", dir.display())
}

/// A `file://` recording store in a fresh temporary folder.
pub fn fresh_recordings_url() -> String {
    let dir = std::env::temp_dir().join(unique("dialstack-recordings-"));
    format!("file://{}", dir.display())
}

/// Both database engines, for tests that must pass on each.
pub fn both_databases() -> [(&'static str, String); 2] {
    [
        ("sqlite", fresh_sqlite_url()),
        ("mariadb", fresh_mysql_url()),
    ]
}

/// RabbitMQ URL with a fresh namespace.
pub fn amqp_url(namespace: &str) -> String {
    match std::env::var("DIALSTACK_TEST_AMQP") {
        // The suite's own node (scripts/test.sh starts it empty): queues are
        // never deleted while tests run, as RabbitMQ stops accepting
        // connections for seconds while it deletes quorum queues.
        Ok(base) => format!("{base}?namespace={namespace}"),
        // The machine's shared broker (a test run by hand): queues go ten
        // minutes after their last consumer, so runs do not pile them up.
        Err(_) => format!("{SHARED_AMQP}?namespace={namespace}&queue_expires_ms=600000"),
    }
}

/// The machine's shared RabbitMQ, used when `DIALSTACK_TEST_AMQP` is unset.
const SHARED_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The host and port of the RabbitMQ the tests use (see [`amqp_url`]).
pub fn amqp_server_addr() -> std::net::SocketAddr {
    let base = amqp_url("");
    let rest = base.split_once("://").map_or(base.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port
        .parse()
        .unwrap_or_else(|e| panic!("DIALSTACK_TEST_AMQP host:port {host_port:?}: {e}"))
}

/// Kafka bootstrap address.
pub fn kafka_addr() -> String {
    std::env::var("DIALSTACK_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Kafka URL with a fresh namespace.
pub fn kafka_url(namespace: &str) -> String {
    format!(
        "kafka://{}?namespace={namespace}&partitions=3",
        kafka_addr()
    )
}

/// Polls `check` until it returns `Some` or `timeout` passes; panics with
/// `what` and the last value seen on timeout.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free UDP port on loopback (bound, then released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// A free TCP port on loopback (bound, then released).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

/// A service running inside the test process on a free port; stopped when
/// dropped.
pub struct InProcess {
    /// Its HTTP base URL.
    pub url: String,
    /// A client for it.
    pub http: reqwest::Client,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Builds and runs service `S` from exactly these variables (plus a free
/// HTTP port and a one-second shutdown grace).
pub async fn in_process<S: dialstack_common::service::Service>(vars: &[(&str, &str)]) -> InProcess {
    let mut env = dialstack_common::config::Env::from_pairs(vars.iter().copied());
    env.set("DIALSTACK_HTTP_ADDR", "127.0.0.1:0");
    env.set("DIALSTACK_SHUTDOWN_GRACE_SECS", "1");
    let stop = tokio_util::sync::CancellationToken::new();
    let config = S::config(&env).unwrap_or_else(|e| panic!("{e}"));
    let app = S::build(config, stop.clone())
        .await
        .expect("service starts");
    let url = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped());
    InProcess {
        url,
        http: reqwest::Client::new(),
        stop,
    }
}

/// The fields of any `call.*` event in one struct, so a test can build an
/// event of any type from one literal; [`typed`] turns it into the contract's
/// typed event.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CallEventData {
    /// Call id.
    pub call_id: String,
    /// Attempt id.
    pub attempt_id: String,
    /// Campaign id.
    pub campaign_id: String,
    /// Number.
    pub phone: String,
    /// Event time.
    pub at_ms: i64,
    /// Outcome (`call.completed`; absent means `failed`).
    pub outcome: Option<dialstack_contract::Outcome>,
    /// Reason.
    pub reason: Option<dialstack_contract::FailReason>,
    /// Final SIP status.
    pub sip_status: Option<u16>,
    /// Ring time.
    pub ring_ms: Option<i64>,
    /// Talk time.
    pub talk_ms: Option<i64>,
    /// Team.
    pub team: Option<String>,
    /// Agent.
    pub agent_id: Option<String>,
}

/// `d` as a typed event of type `ty`.
pub fn typed(ty: &str, d: &CallEventData) -> dialstack_contract::CallEvent {
    use dialstack_contract::*;
    let call = CallRef {
        call_id: d.call_id.clone(),
        attempt_id: d.attempt_id.clone(),
        campaign_id: d.campaign_id.clone(),
        phone: d.phone.clone(),
        at_ms: d.at_ms,
        team: d.team.clone(),
    };
    match ty {
        types::CALL_DIALING => CallEvent::Dialing(CallDialing { call }),
        types::CALL_RINGING => CallEvent::Ringing(CallRinging { call }),
        types::CALL_ANSWERED => CallEvent::Answered(CallAnswered {
            call,
            ring_ms: d.ring_ms.unwrap_or(0),
        }),
        types::CALL_COMPLETED => CallEvent::Completed(CallCompleted {
            sip_status: d.sip_status,
            ring_ms: d.ring_ms.unwrap_or(0),
            talk_ms: d.talk_ms.unwrap_or(0),
            agent_id: d.agent_id.clone(),
            ..CallCompleted::unanswered(call, d.outcome.unwrap_or(Outcome::Failed), d.reason)
        }),
        other => panic!("not a call event type: {other}"),
    }
}
