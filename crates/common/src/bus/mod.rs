//! One publish/subscribe abstraction over three backends, chosen by URL:
//! `memory://` (in-process), `amqp://` or `amqps://` (RabbitMQ through
//! lapin, TLS with rustls) and `kafka://` (rdkafka, TLS with OpenSSL).
//!
//! A [`Channel`] is one logical stream (the events exchange or the commands
//! topic). `publish` returns only once the broker has confirmed the message;
//! `consume` delivers to a [`Handler`] and acknowledges only after the handler
//! returned `Ok`, so a handler commits its own transaction first.
//! `consume_batch` delivers what the broker has ready, up to
//! [`Subscription::max_batch`] messages at once, to a [`BatchHandler`] that
//! applies them in one transaction and answers for each message: each is
//! acknowledged, retried or dead-lettered on its own answer.
//!
//! URL query parameters understood by every backend:
//! - `namespace=x`: prefixes every exchange, queue, topic and group name with
//!   `x.` (tests use a random one per test);
//! - `partitions=n` (Kafka): partitions of a topic created at start (default 12);
//! - `queue_expires_ms=n` (RabbitMQ): queues declared by this channel are
//!   deleted by the broker after `n` ms without consumers (`x-expires`); for
//!   test namespaces, never for production queues;
//! - `ssl_ca=/path/ca.pem` (`amqps://`, Kafka over TLS): CA bundle for the
//!   broker's certificate, instead of [`BusOptions::ca_file`];
//! - `security_protocol=plaintext|ssl|sasl_plaintext|sasl_ssl` (Kafka,
//!   default `plaintext`), `sasl_mechanism=PLAIN|SCRAM-SHA-256|SCRAM-SHA-512`
//!   (required with `sasl_*`), `sasl_username=`, `sasl_password=` (Kafka;
//!   better given as [`BusOptions`], from variables, than in a URL).
//!
//! Values are percent-decoded. Errors show the URL with its passwords masked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub mod amqp;
pub mod kafka;
pub mod memory;

/// The URL schemes accepted for a channel.
pub const SCHEMES: &[&str] = &["memory://", "amqp://", "amqps://", "kafka://"];

/// Logical name of the events channel (DESIGN §2).
pub const EVENTS: &str = "dialstack.events";
/// Logical name of the commands channel (DESIGN §2).
pub const COMMANDS: &str = "dialstack.call-commands";

/// A message to publish.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// Unique id (the CloudEvent id): AMQP `message_id`, Kafka header `ce_id`.
    pub id: String,
    /// Routing key (the CloudEvent type).
    pub routing_key: String,
    /// Partition key (the call or agent id): per-key ordering on Kafka.
    pub key: String,
    /// The encoded CloudEvent.
    pub payload: Bytes,
}

/// A message handed to a handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Routing key (the CloudEvent type).
    pub routing_key: String,
    /// Partition key, where the backend carries one.
    pub key: String,
    /// The raw payload.
    pub payload: Bytes,
    /// 1 for the first delivery, more when redelivered.
    pub attempt: u32,
}

/// Why a handler did not accept a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Try again later (a database blip); after the delivery limit the message
    /// is dead-lettered.
    #[error("transient: {0}")]
    Transient(String),
    /// The message can never be processed (malformed): dead-letter it now.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Consumes messages.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Processes one message; `Ok` means it may be acknowledged.
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandleError>;
}

/// Consumes messages a batch at a time, so that a consumer can apply many
/// in one transaction (one commit, one inbox statement).
#[async_trait::async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Processes `batch` (one or more messages, in delivery order) and
    /// returns one result per message, in the same order. `Ok` means that
    /// message may be acknowledged, so only once its effect is committed;
    /// `Permanent` dead-letters it alone; `Transient` redelivers it alone.
    async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Result<(), HandleError>>;
}

/// A [`Handler`] fed batches of one.
struct OneByOne(Arc<dyn Handler>);

#[async_trait::async_trait]
impl BatchHandler for OneByOne {
    async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Result<(), HandleError>> {
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            out.push(self.0.handle(d).await);
        }
        out
    }
}

/// A batch handler's answers, exactly one per message: a handler that
/// answered for too few leaves the rest to be redelivered.
pub(crate) fn answers(
    mut results: Vec<Result<(), HandleError>>,
    n: usize,
) -> Vec<Result<(), HandleError>> {
    if results.len() != n {
        tracing::error!(
            results = results.len(),
            messages = n,
            "batch handler answered for a different number of messages"
        );
    }
    results.truncate(n);
    while results.len() < n {
        results.push(Err(HandleError::Transient(
            "no answer from the batch handler".into(),
        )));
    }
    results
}

/// How a consumer subscribes.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Consumer group / queue suffix, normally the service name.
    pub group: String,
    /// Routing-key patterns (`*` one word, `#` any number of words).
    pub bindings: Vec<String>,
    /// Messages handled at once; with a [`BatchHandler`], batches handled
    /// at once.
    pub concurrency: usize,
    /// Most messages given to a [`BatchHandler`] at once (1 unless set by
    /// [`Self::with_batch`]); a plain [`Handler`] always gets one.
    pub max_batch: usize,
    /// Deliveries before a message that keeps failing is dead-lettered.
    pub max_deliveries: u32,
    /// How long to let in-flight handlers finish after shutdown; the rest are
    /// left unacknowledged and will be redelivered.
    pub drain_timeout: Duration,
    /// A subscription of one process rather than of a service (commands
    /// addressed to the instance that holds a call): its queue is deleted
    /// by RabbitMQ this long after its last consumer went away, and on
    /// Kafka its group starts at the end of the topic instead of replaying
    /// it. `None` for a service's durable subscription.
    pub instance_expires: Option<Duration>,
}

impl Subscription {
    /// A subscription with the defaults (concurrency 1, 5 deliveries, 10 s drain).
    pub fn new(group: impl Into<String>, bindings: &[&str]) -> Self {
        Self {
            group: group.into(),
            bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
            concurrency: 1,
            max_batch: 1,
            max_deliveries: 5,
            drain_timeout: Duration::from_secs(10),
            instance_expires: None,
        }
    }

    /// One process's own subscription (see [`Self::instance_expires`]):
    /// `group` must name the instance, and its queue goes away `expires`
    /// after the instance does.
    pub fn for_instance(group: impl Into<String>, bindings: &[&str], expires: Duration) -> Self {
        Self {
            instance_expires: Some(expires.max(Duration::from_secs(1))),
            ..Self::new(group, bindings)
        }
    }

    /// Sets the number of messages handled at once.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets the most messages given to a [`BatchHandler`] at once. A batch
    /// holds what the broker has ready when a handler is free: one message
    /// when traffic is light, up to `n` under load.
    pub fn with_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Whether `routing_key` matches one of the bindings.
    pub fn matches(&self, routing_key: &str) -> bool {
        self.bindings.iter().any(|b| topic_matches(b, routing_key))
    }
}

/// AMQP topic-exchange matching: `*` is one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((first, rest)) => match k.split_first() {
                Some((kf, krest)) => (*first == "*" || first == kf) && go(rest, krest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// A bus failure.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL cannot be used.
    #[error("bad bus url {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The broker refused, did not confirm, or is unreachable.
    #[error("broker error: {0}")]
    Broker(String),
    /// The TLS settings cannot be used (an unreadable CA file).
    #[error("bus tls: {0}")]
    Tls(String),
}

/// Connection settings that stay out of the channel URLs (and so out of
/// logs); a URL parameter of the same meaning wins over them.
#[derive(Clone, Default)]
pub struct BusOptions {
    /// CA bundle (PEM) for `amqps://`, trusted besides the system's CAs, and
    /// for Kafka over TLS, used instead of them (`DIALSTACK_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// Kafka SASL user (`DIALSTACK_KAFKA_SASL_USERNAME`).
    pub sasl_username: Option<String>,
    /// Kafka SASL password (`DIALSTACK_KAFKA_SASL_PASSWORD`).
    pub sasl_password: Option<String>,
}

impl std::fmt::Debug for BusOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusOptions")
            .field("ca_file", &self.ca_file)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl BusOptions {
    /// The CA bundle of `tls` and the Kafka SASL credentials of `env`.
    pub fn from_env(env: &crate::config::Env, tls: &crate::tls::TlsConfig) -> Self {
        Self {
            ca_file: tls.ca_file().map(PathBuf::from),
            sasl_username: env.get("DIALSTACK_KAFKA_SASL_USERNAME").map(str::to_owned),
            sasl_password: env.get("DIALSTACK_KAFKA_SASL_PASSWORD").map(str::to_owned),
        }
    }
}

/// A password that never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// `url` with the password of its user part and `sasl_password=` masked.
pub(crate) fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some((scheme, after)) = url.split_once("://") {
        let authority_end = after.find(['/', '?']).unwrap_or(after.len());
        if let Some(at) = after[..authority_end].rfind('@') {
            if let Some(colon) = after[..at].find(':') {
                out = format!("{scheme}://{}:***{}", &after[..colon], &after[at..]);
            }
        }
    }
    if let Some(pos) = out.find("sasl_password=") {
        let start = pos + "sasl_password=".len();
        let end = out[start..].find('&').map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
    }
    out
}

/// `%XX` escapes decoded (a malformed escape is kept as it is).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait::async_trait]
pub(crate) trait Backend: Send + Sync {
    async fn publish(&self, msg: &OutMessage) -> Result<(), BusError>;
    async fn consume(
        &self,
        sub: Subscription,
        handler: Arc<dyn BatchHandler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError>;
    async fn health(&self) -> Result<(), String>;
    fn describe(&self) -> String;
    /// Declares what `consume` needs (queue, bindings) so that messages
    /// published from now on are kept for the group.
    async fn prepare(&self, sub: &Subscription) -> Result<(), BusError>;
    /// Up to `max` dead-lettered messages of `group`, without removing them.
    async fn dead_letters(&self, group: &str, max: usize) -> Result<Vec<Delivery>, BusError>;
    /// Messages waiting for `group`: ready in its queue (memory, RabbitMQ)
    /// or not yet committed by the group (Kafka consumer lag).
    async fn backlog(&self, group: &str) -> Result<u64, BusError>;
}

/// One logical channel on one backend. Cheap to clone.
#[derive(Clone)]
pub struct Channel {
    backend: Arc<dyn Backend>,
    logical: Arc<str>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.backend.describe())
    }
}

/// A URL split into the part the backend sees and the parameters we own.
#[derive(Debug, Clone)]
pub(crate) struct ParsedUrl {
    pub scheme: String,
    /// Everything after `scheme://` without our query parameters.
    pub rest: String,
    pub namespace: Option<String>,
    pub partitions: i32,
    pub queue_expires_ms: Option<i64>,
    /// `ssl_ca=`: CA bundle for the broker's certificate.
    pub ssl_ca: Option<PathBuf>,
    /// Kafka `security_protocol=` (lower case).
    pub security_protocol: Option<String>,
    /// Kafka `sasl_mechanism=`.
    pub sasl_mechanism: Option<String>,
    /// Kafka `sasl_username=`.
    pub sasl_username: Option<String>,
    /// Kafka `sasl_password=`.
    pub sasl_password: Option<Secret>,
}

impl ParsedUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, BusError> {
        let bad = |reason: &str| BusError::BadUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let (scheme, after) = url.split_once("://").ok_or_else(|| bad("missing scheme"))?;
        let (base, query) = match after.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (after, None),
        };
        let mut namespace = None;
        let mut partitions = 12;
        let mut queue_expires_ms = None;
        let mut ssl_ca = None;
        let mut security_protocol = None;
        let mut sasl_mechanism = None;
        let mut sasl_username = None;
        let mut sasl_password = None;
        let mut passthrough = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "namespace" => {
                    if v.is_empty()
                        || !v
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    {
                        return Err(bad("namespace must be [A-Za-z0-9_-]+"));
                    }
                    namespace = Some(v.to_owned());
                }
                "partitions" => {
                    partitions = v
                        .parse()
                        .ok()
                        .filter(|n: &i32| *n > 0)
                        .ok_or_else(|| bad("partitions must be a positive integer"))?;
                }
                "queue_expires_ms" => {
                    queue_expires_ms = Some(
                        v.parse()
                            .ok()
                            .filter(|n: &i64| *n > 0)
                            .ok_or_else(|| bad("queue_expires_ms must be a positive integer"))?,
                    );
                }
                "ssl_ca" => {
                    if v.is_empty() {
                        return Err(bad("ssl_ca needs the path of a PEM file"));
                    }
                    ssl_ca = Some(PathBuf::from(percent_decode(v)));
                }
                "security_protocol" => {
                    let p = v.to_ascii_lowercase();
                    if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&p.as_str()) {
                        return Err(bad(
                            "security_protocol must be plaintext, ssl, sasl_plaintext or sasl_ssl",
                        ));
                    }
                    security_protocol = Some(p);
                }
                "sasl_mechanism" => {
                    let m = v.to_ascii_uppercase();
                    if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&m.as_str()) {
                        return Err(bad(
                            "sasl_mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                        ));
                    }
                    sasl_mechanism = Some(m);
                }
                "sasl_username" => sasl_username = Some(percent_decode(v)),
                "sasl_password" => sasl_password = Some(Secret(percent_decode(v))),
                _ => passthrough.push(pair),
            }
        }
        let kafka_only = security_protocol.is_some()
            || sasl_mechanism.is_some()
            || sasl_username.is_some()
            || sasl_password.is_some();
        if kafka_only && scheme != "kafka" {
            return Err(bad(
                "security_protocol and sasl_* are kafka:// parameters (amqps:// takes the user from the URL)",
            ));
        }
        if ssl_ca.is_some() {
            let tls = match scheme {
                "amqps" => true,
                "kafka" => matches!(security_protocol.as_deref(), Some("ssl" | "sasl_ssl")),
                _ => false,
            };
            if !tls {
                return Err(bad(
                    "ssl_ca needs amqps:// or kafka:// with security_protocol=ssl or sasl_ssl",
                ));
            }
        }
        if scheme == "kafka" && !passthrough.is_empty() {
            return Err(bad(&format!(
                "unknown kafka:// parameter {:?}",
                passthrough[0].split('=').next().unwrap_or_default()
            )));
        }
        let rest = if passthrough.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passthrough.join("&"))
        };
        Ok(Self {
            scheme: scheme.to_owned(),
            rest,
            namespace,
            partitions,
            queue_expires_ms,
            ssl_ca,
            security_protocol,
            sasl_mechanism,
            sasl_username,
            sasl_password,
        })
    }

    pub(crate) fn name(&self, logical: &str) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}.{logical}"),
            None => logical.to_owned(),
        }
    }
}

impl Channel {
    /// Connects to the channel `logical` (e.g. [`EVENTS`]) on the backend named
    /// by `url`, creating the exchange or topic if needed.
    pub async fn connect(url: &str, logical: &str) -> Result<Self, BusError> {
        Self::connect_with(url, logical, &BusOptions::default()).await
    }

    /// As [`Self::connect`], with the CA bundle and credentials of `options`
    /// where the URL names none.
    pub async fn connect_with(
        url: &str,
        logical: &str,
        options: &BusOptions,
    ) -> Result<Self, BusError> {
        let parsed = ParsedUrl::parse(url)?;
        let backend: Arc<dyn Backend> = match parsed.scheme.as_str() {
            "memory" => Arc::new(memory::MemoryBackend::new(&parsed, logical)),
            "amqp" | "amqps" => {
                Arc::new(amqp::AmqpBackend::connect(&parsed, logical, options).await?)
            }
            "kafka" => Arc::new(kafka::KafkaBackend::connect(&parsed, logical, options).await?),
            other => {
                return Err(BusError::BadUrl {
                    url: redact(url),
                    reason: format!("unknown scheme {other}"),
                })
            }
        };
        Ok(Self {
            backend,
            logical: logical.into(),
        })
    }

    /// The logical channel name ([`EVENTS`] or [`COMMANDS`]).
    pub fn logical(&self) -> &str {
        &self.logical
    }

    /// Publishes and waits for the broker's confirmation.
    pub async fn publish(&self, msg: &OutMessage) -> Result<(), BusError> {
        self.backend.publish(msg).await
    }

    /// Consumes until `shutdown` is cancelled, reconnecting after broker
    /// failures. Returns when the consumer has drained.
    pub async fn consume(
        &self,
        sub: Subscription,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let sub = Subscription {
            max_batch: 1,
            ..sub
        };
        self.backend
            .consume(sub, Arc::new(OneByOne(handler)), shutdown)
            .await
    }

    /// Consumes until `shutdown` is cancelled as [`Self::consume`] does,
    /// handing the handler up to `sub.max_batch` messages at once.
    pub async fn consume_batch(
        &self,
        sub: Subscription,
        handler: Arc<dyn BatchHandler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        self.backend.consume(sub, handler, shutdown).await
    }

    /// `Ok` when the broker answers.
    pub async fn health(&self) -> Result<(), String> {
        self.backend.health().await
    }

    /// Declares the group's queue and bindings, so that what is published
    /// from now on waits for the consumer even if it has not started yet.
    pub async fn prepare(&self, sub: &Subscription) -> Result<(), BusError> {
        self.backend.prepare(sub).await
    }

    /// Up to `max` messages dead-lettered for `group`, left where they are
    /// (for operators and tests).
    pub async fn dead_letters(&self, group: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        self.backend.dead_letters(group, max).await
    }

    /// How many messages wait for `group`: the RabbitMQ queue's ready
    /// messages, the Kafka consumer group's lag summed over partitions, or
    /// the in-process queue's length. Exported as
    /// `dialstack_consumer_lag_messages`.
    pub async fn backlog(&self, group: &str) -> Result<u64, BusError> {
        self.backend.backlog(group).await
    }
}

/// Readiness check of a channel.
pub struct ChannelReady {
    /// Name shown when failing.
    pub name: &'static str,
    /// The channel.
    pub channel: Channel,
}

#[async_trait::async_trait]
impl crate::http::ReadyCheck for ChannelReady {
    fn name(&self) -> &str {
        self.name
    }
    async fn check(&self) -> Result<(), String> {
        self.channel.health().await
    }
}

/// Backoff for reconnect loops: 200 ms doubling to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((200u64 << attempt.min(5)).min(5_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_like_amqp() {
        assert!(topic_matches("call.*", "call.completed"));
        assert!(!topic_matches("call.*", "call.recording.ready"));
        assert!(topic_matches("call.#", "call.recording.ready"));
        assert!(topic_matches("#", "agent.state"));
        assert!(topic_matches("dial", "dial"));
        assert!(!topic_matches("dial", "hangup"));
    }

    #[test]
    fn url_parameters_are_ours_and_stripped() {
        let p = ParsedUrl::parse("amqp://127.0.0.1:5672/%2f?namespace=t1&heartbeat=10").unwrap();
        assert_eq!(p.rest, "127.0.0.1:5672/%2f?heartbeat=10");
        assert_eq!(p.name(EVENTS), "t1.dialstack.events");
        assert!(ParsedUrl::parse("kafka://x?partitions=0").is_err());
        assert!(ParsedUrl::parse("kafka://x?namespace=a/b").is_err());
        assert!(ParsedUrl::parse("nothing").is_err());
    }

    #[test]
    fn tls_parameters_are_ours_and_checked_per_scheme() {
        let p = ParsedUrl::parse("amqps://u:p@mq:5671/%2f?ssl_ca=/etc/ca%20x.pem&heartbeat=10")
            .unwrap();
        assert_eq!(p.scheme, "amqps");
        assert_eq!(p.rest, "u:p@mq:5671/%2f?heartbeat=10");
        assert_eq!(
            p.ssl_ca.as_deref(),
            Some(std::path::Path::new("/etc/ca x.pem"))
        );
        // A CA for a plaintext connection is a mistake, not a no-op.
        assert!(ParsedUrl::parse("amqp://mq/%2f?ssl_ca=/ca.pem").is_err());
        assert!(ParsedUrl::parse("kafka://k:9093?ssl_ca=/ca.pem").is_err());
        assert!(ParsedUrl::parse("amqps://mq/%2f?security_protocol=ssl").is_err());

        let p = ParsedUrl::parse(
            "kafka://k:9093?namespace=n&security_protocol=SASL_SSL&sasl_mechanism=scram-sha-512\
             &sasl_username=svc&sasl_password=a%26b&ssl_ca=/ca.pem",
        )
        .unwrap();
        assert_eq!(p.rest, "k:9093");
        assert_eq!(p.security_protocol.as_deref(), Some("sasl_ssl"));
        assert_eq!(p.sasl_mechanism.as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(p.sasl_username.as_deref(), Some("svc"));
        assert_eq!(p.sasl_password, Some(Secret("a&b".into())));
        assert!(!format!("{p:?}").contains("a&b"));
        assert!(ParsedUrl::parse("kafka://k?security_protocol=tls").is_err());
        assert!(ParsedUrl::parse("kafka://k?sasl_mechanism=GSSAPI").is_err());
        assert!(ParsedUrl::parse("kafka://k?acks=1").is_err());
    }

    #[test]
    fn errors_mask_passwords() {
        assert_eq!(
            redact("amqps://user:hunter2@mq:5671/%2f?x=1"),
            "amqps://user:***@mq:5671/%2f?x=1"
        );
        assert_eq!(
            redact("kafka://k?sasl_username=u&sasl_password=hunter2&namespace=n"),
            "kafka://k?sasl_username=u&sasl_password=***&namespace=n"
        );
        let err = ParsedUrl::parse("kafka://k?sasl_password=hunter2&partitions=0").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = ParsedUrl::parse("amqp://u:hunter2@mq/?namespace=a/b").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
