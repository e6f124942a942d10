//! Kafka backend (rdkafka). The producer is idempotent with `acks=all` and
//! `publish` waits for the delivery report. A consumer group stores an offset
//! only after the handler returned `Ok` (auto-commit then commits stored
//! offsets), so a message whose handler did not finish is read again by the
//! next member of the group. Transient failures are retried in place up to the
//! delivery limit; permanent ones and exhausted retries go to `<topic>.dlq`.
//! Topics are created at start through the admin API (brokers such as tansu
//! do not auto-create them).
//!
//! TLS and SASL come from the URL (`security_protocol`, `ssl_ca`,
//! `sasl_mechanism`, `sasl_username`, `sasl_password`) or [`BusOptions`], and
//! apply alike to the admin client, the producer, the consumers and the lag
//! and dead-letter readers. librdkafka does TLS with OpenSSL, not rustls: it
//! verifies the broker's certificate and host name
//! (`ssl.endpoint.identification.algorithm=https`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use super::{
    Backend, BatchHandler, BusError, BusOptions, Delivery, HandleError, OutMessage, ParsedUrl,
    Subscription,
};

pub(crate) struct KafkaBackend {
    brokers: String,
    /// librdkafka's security properties, set on every client.
    security: Vec<(&'static str, String)>,
    topic: String,
    dlq: String,
    namespace: ParsedUrl,
    /// The producer; a new one replaces it after a fatal error (below).
    producer: std::sync::Mutex<FutureProducer<ClientErrors>>,
    /// Clients that read each group's committed offsets (never join it).
    lag_readers: std::sync::Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

/// A group's lag on `topic`: for each partition, the high watermark minus
/// the committed offset (or minus the low watermark when nothing is
/// committed yet, as the group starts from the earliest offset).
fn group_lag(reader: &BaseConsumer, topic: &str) -> Result<u64, BusError> {
    let timeout = Duration::from_secs(5);
    // The reader never subscribes; polling only drains the client's own
    // events (errors while brokers are away), which would otherwise pile up.
    while reader.poll(Duration::ZERO).is_some() {}
    let metadata = reader
        .fetch_metadata(Some(topic), timeout)
        .map_err(broker)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut wanted = rdkafka::TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition(topic, *p);
    }
    let committed = reader.committed_offsets(wanted, timeout).map_err(broker)?;
    let mut lag = 0u64;
    for p in partitions {
        let (low, high) = reader.fetch_watermarks(topic, p, timeout).map_err(broker)?;
        // Retention may have deleted messages past the committed offset.
        let from = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        lag += (high - from).max(0) as u64;
    }
    Ok(lag)
}

/// Every partition of `topic` at its current end (high watermark).
/// Blocking calls to the broker, made once when an instance starts.
fn end_offsets<C: Consumer>(
    consumer: &C,
    topic: &str,
) -> Result<rdkafka::TopicPartitionList, BusError> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(broker)?;
    let mut out = rdkafka::TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .map_err(broker)?;
            out.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(high))
                .map_err(broker)?;
        }
    }
    if out.count() == 0 {
        return Err(BusError::Broker(format!("topic {topic} has no partitions")));
    }
    Ok(out)
}

fn broker(e: impl std::fmt::Display) -> BusError {
    BusError::Broker(e.to_string())
}

/// librdkafka's security properties for `parsed` (URL parameters first,
/// then `options`).
fn security(
    parsed: &ParsedUrl,
    options: &BusOptions,
) -> Result<Vec<(&'static str, String)>, BusError> {
    let bad = |reason: &str| BusError::BadUrl {
        url: format!("kafka://{}", parsed.rest),
        reason: reason.to_owned(),
    };
    let protocol = parsed.security_protocol.as_deref().unwrap_or("plaintext");
    let mut out = vec![("security.protocol", protocol.to_owned())];
    if matches!(protocol, "ssl" | "sasl_ssl") {
        if let Some(ca) = parsed.ssl_ca.as_ref().or(options.ca_file.as_ref()) {
            // librdkafka reports an unreadable file only as a failed client:
            // say which file it is.
            crate::tls::read_ca_file(ca).map_err(|e| BusError::Tls(e.to_string()))?;
            out.push(("ssl.ca.location", ca.display().to_string()));
        }
    }
    if protocol.starts_with("sasl_") {
        let mechanism = parsed.sasl_mechanism.as_deref().ok_or_else(|| {
            bad("sasl_mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512) is required with sasl_*")
        })?;
        let username = parsed
            .sasl_username
            .clone()
            .or_else(|| options.sasl_username.clone())
            .ok_or_else(|| bad("no SASL user: sasl_username or DIALSTACK_KAFKA_SASL_USERNAME"))?;
        let password = parsed
            .sasl_password
            .as_ref()
            .map(|s| s.0.clone())
            .or_else(|| options.sasl_password.clone())
            .ok_or_else(|| {
                bad("no SASL password: sasl_password or DIALSTACK_KAFKA_SASL_PASSWORD")
            })?;
        out.push(("sasl.mechanism", mechanism.to_owned()));
        out.push(("sasl.username", username));
        out.push(("sasl.password", password));
    } else if parsed.sasl_mechanism.is_some()
        || parsed.sasl_username.is_some()
        || parsed.sasl_password.is_some()
    {
        return Err(bad(
            "sasl_* parameters need security_protocol=sasl_ssl or sasl_plaintext",
        ));
    }
    Ok(out)
}

/// The producer's context: librdkafka's errors go to the log, and the first
/// one is kept so that a start that fails says why (a failed TLS handshake,
/// refused SASL credentials) instead of only "timed out". The producer's
/// polling thread delivers them; the admin client never polls for them.
#[derive(Clone, Default)]
struct ClientErrors(Arc<std::sync::Mutex<Option<String>>>);

impl ClientContext for ClientErrors {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel::{Alert, Critical, Emerg, Error};
        if matches!(level, Emerg | Alert | Critical | Error) {
            tracing::warn!(facility = fac, message, "kafka client error");
            self.remember(message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        self.remember(reason);
    }
}

impl ClientErrors {
    fn remember(&self, message: &str) {
        let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| message.to_owned());
    }

    /// `e` followed by the first client error, if any.
    fn explain(&self, e: impl std::fmt::Display) -> BusError {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            None => broker(e),
            Some(first) => BusError::Broker(format!("{e}; first client error: {first}")),
        }
    }
}

/// A client configuration for `brokers` with the security properties set.
fn client_config(brokers: &str, security: &[(&'static str, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in security {
        config.set(*k, v);
    }
    config
}

const TYPE_HEADER: &str = "ce_type";
const ID_HEADER: &str = "ce_id";

/// A message whose handling ended.
struct Finished {
    partition: i32,
    offset: i64,
    id: String,
    delivery: Delivery,
    /// Why it is dead-lettered, if it is.
    dead: Option<String>,
}

impl KafkaBackend {
    /// Dead-letters the message if it must be, then stores the offsets of the
    /// partition's finished prefix.
    async fn finish(
        &self,
        consumer: &StreamConsumer,
        in_flight: &mut HashMap<i32, BTreeMap<i64, bool>>,
        f: Finished,
        shutdown: &CancellationToken,
    ) {
        if let Some(reason) = &f.dead {
            tracing::warn!(routing_key = %f.delivery.routing_key, %reason, "message dead-lettered");
            // Keep retrying the dead-letter write: dropping the message is not an option.
            let mut n = 0;
            while let Err(e) = self
                .send(
                    &self.dlq,
                    &f.delivery.key,
                    &f.delivery.routing_key,
                    &f.id,
                    &f.delivery.payload,
                )
                .await
            {
                tracing::warn!(error = %e, "dead-letter publish failed, retrying");
                n += 1;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(super::backoff(n)) => {}
                }
            }
        }
        let Some(offsets) = in_flight.get_mut(&f.partition) else {
            return;
        };
        if let Some(done) = offsets.get_mut(&f.offset) {
            *done = true;
        }
        let mut last = None;
        while let Some(entry) = offsets.first_entry() {
            if !*entry.get() {
                break;
            }
            last = Some(*entry.key());
            entry.remove();
        }
        if let Some(offset) = last {
            if let Err(e) = consumer.store_offset(&self.topic, f.partition, offset) {
                tracing::warn!(error = %e, partition = f.partition, "cannot store offset");
            }
        }
    }

    /// A client configuration for the brokers, TLS and SASL included.
    fn config(&self) -> ClientConfig {
        client_config(&self.brokers, &self.security)
    }

    pub(crate) async fn connect(
        parsed: &ParsedUrl,
        logical: &str,
        options: &BusOptions,
    ) -> Result<Self, BusError> {
        let brokers = parsed.rest.trim_end_matches('/').to_owned();
        if brokers.is_empty() {
            return Err(BusError::BadUrl {
                url: format!("kafka://{}", parsed.rest),
                reason: "no broker address".into(),
            });
        }
        let security = security(parsed, options)?;
        let topic = parsed.name(logical);
        let dlq = format!("{topic}.dlq");
        // The producer first: its context collects the errors that explain
        // a failed topic creation.
        let errors = ClientErrors::default();
        let producer = new_producer(&brokers, &security, errors.clone())?;
        let admin: AdminClient<DefaultClientContext> = client_config(&brokers, &security)
            .create()
            .map_err(broker)?;
        let topics = [
            NewTopic::new(&topic, parsed.partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
        ];
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics(&topics, &opts)
            .await
            .map_err(|e| errors.explain(e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BusError::Broker(format!(
                        "cannot create topic {name}: {code}"
                    )))
                }
            }
        }
        Ok(Self {
            brokers,
            security,
            topic,
            dlq,
            namespace: parsed.clone(),
            producer: std::sync::Mutex::new(producer),
            lag_readers: std::sync::Mutex::new(HashMap::new()),
        })
    }

    async fn send(
        &self,
        topic: &str,
        key: &str,
        ty: &str,
        id: &str,
        payload: &[u8],
    ) -> Result<(), BusError> {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: TYPE_HEADER,
                value: Some(ty),
            })
            .insert(Header {
                key: ID_HEADER,
                value: Some(id),
            });
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        let producer = self.producer();
        match producer.send(record, Duration::from_secs(0)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                let fenced = matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::ProducerFenced
                            | RDKafkaErrorCode::InvalidProducerEpoch
                            | RDKafkaErrorCode::OutOfOrderSequenceNumber
                            | RDKafkaErrorCode::UnknownProducerId
                    )
                );
                self.replace_unusable(fenced);
                Err(broker(e))
            }
        }
    }

    fn producer(&self) -> FutureProducer<ClientErrors> {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the producer after a send failed, if librdkafka declared it
    /// unusable (a fatal error) or the broker refused its producer id or
    /// epoch (`fenced`). An idempotent producer that the broker fenced or
    /// found out of sequence (seen when a broker restarted while messages
    /// were in flight) fails every send from then on, and librdkafka's answer
    /// is a new instance; the unsent messages stay in the outbox and go out
    /// through the new one (consumers drop what they have seen).
    fn replace_unusable(&self, fenced: bool) {
        let mut current = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        let reason = match current.client().fatal_error() {
            Some((code, reason)) => format!("{code}: {reason}"),
            None if fenced => "producer id or epoch refused by the broker".to_owned(),
            None => return,
        };
        match new_producer(&self.brokers, &self.security, ClientErrors::default()) {
            Ok(fresh) => {
                tracing::warn!(%reason, topic = %self.topic, "kafka producer unusable, replaced");
                *current = fresh;
            }
            Err(e) => {
                tracing::warn!(error = %e, %reason, "kafka producer unusable and not replaced yet")
            }
        }
    }
}

/// The idempotent producer (`acks=all`).
fn new_producer(
    brokers: &str,
    security: &[(&'static str, String)],
    errors: ClientErrors,
) -> Result<FutureProducer<ClientErrors>, BusError> {
    client_config(brokers, security)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "10000")
        .create_with_context(errors)
        .map_err(broker)
}

/// Commits stored offsets (when asked) and closes the consumer on a thread of
/// its own: both block until the group coordinator answers, which must never
/// stall the async runtime, and a coordinator that is gone must not hang
/// shutdown (the process may exit with the thread still waiting).
fn close_in_background(consumer: StreamConsumer, commit: bool) {
    if tokio::runtime::Handle::try_current().is_err() {
        // Not on the runtime: closing here blocks nobody.
        if commit {
            let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
        }
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            if commit {
                let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
            }
            drop(consumer);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot spawn the kafka close thread");
    }
}

/// A consumer that is closed in the background however its owner returns.
struct Closing(Option<StreamConsumer>);

impl std::ops::Deref for Closing {
    type Target = StreamConsumer;
    fn deref(&self) -> &StreamConsumer {
        self.0.as_ref().expect("present until drop")
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            close_in_background(c, true);
        }
    }
}

fn header<'a>(msg: &'a impl Message, name: &str) -> Option<&'a str> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[async_trait::async_trait]
impl Backend for KafkaBackend {
    async fn publish(&self, msg: &OutMessage) -> Result<(), BusError> {
        self.send(
            &self.topic,
            &msg.key,
            &msg.routing_key,
            &msg.id,
            &msg.payload,
        )
        .await
    }

    async fn consume(
        &self,
        sub: Subscription,
        handler: Arc<dyn BatchHandler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let group = self.namespace.name(&format!("dialstack.{}", sub.group));
        let consumer: StreamConsumer = self
            .config()
            .set("group.id", &group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            // A service's group replays what it missed; an instance's own
            // group is new each time and only wants what comes after it.
            .set(
                "auto.offset.reset",
                if sub.instance_expires.is_some() {
                    "latest"
                } else {
                    "earliest"
                },
            )
            // The longest a fetch may wait for data. tansu 0.6 sleeps through
            // part of it even when data is there (half of the default 500 ms
            // per fetch), which became most of the dial latency.
            .set("fetch.wait.max.ms", "20")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // Also the rebalance timeout: how long a rebalance waits for a
            // member that stopped polling (a replica killed with SIGKILL whose
            // session the broker does not expire) before it goes on without it.
            .set("max.poll.interval.ms", "30000")
            .create()
            .map_err(broker)?;
        if sub.instance_expires.is_some() {
            // An instance reads every partition itself, from what is
            // published after this point (the end offsets are read before
            // `consume` gets going, not when a rebalance completes seconds
            // later), and never shares a partition.
            let at_end = loop {
                match end_offsets(&consumer, &self.topic) {
                    Ok(at_end) => break at_end,
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, %group, error = %e, "cannot read the topic's end offsets yet");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                    }
                }
            };
            consumer.assign(&at_end).map_err(broker)?;
        } else {
            consumer.subscribe(&[&self.topic]).map_err(broker)?;
        }
        let consumer = Closing(Some(consumer));
        tracing::info!(topic = %self.topic, %group, concurrency = sub.concurrency, "consuming");

        // Messages are handled concurrently; an offset is stored only when
        // every earlier message of its partition is done, so a crash never
        // skips an unfinished message.
        let permits = Arc::new(tokio::sync::Semaphore::new(sub.concurrency));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
        let mut in_flight: HashMap<i32, BTreeMap<i64, bool>> = HashMap::new();
        let abandon = CancellationToken::new();
        let mut running = 0usize;
        loop {
            tokio::select! {
                biased;
                Some(f) = done_rx.recv() => {
                    running -= 1;
                    self.finish(&consumer, &mut in_flight, f, &shutdown).await;
                }
                _ = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => {
                    let Ok(permit) = permit else { break };
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        Some(f) = done_rx.recv() => {
                            running -= 1;
                            self.finish(&consumer, &mut in_flight, f, &shutdown).await;
                            continue;
                        }
                        m = consumer.recv() => m,
                    };
                    let mut batch = Vec::new();
                    let mut next = Some(next);
                    // What the client has already fetched joins the batch.
                    while let Some(m) = next.take() {
                        let msg = match m {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::warn!(error = %e, "kafka consumer error");
                                if batch.is_empty() {
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                                break;
                            }
                        };
                        let (partition, offset) = (msg.partition(), msg.offset());
                        let routing_key = header(&msg, TYPE_HEADER).unwrap_or("").to_owned();
                        let id = header(&msg, ID_HEADER).unwrap_or("").to_owned();
                        in_flight.entry(partition).or_default().insert(offset, false);
                        let delivery = Delivery {
                            routing_key,
                            key: msg
                                .key()
                                .map(|k| String::from_utf8_lossy(k).into_owned())
                                .unwrap_or_default(),
                            payload: bytes::Bytes::copy_from_slice(msg.payload().unwrap_or(&[])),
                            attempt: 1,
                        };
                        drop(msg);
                        running += 1;
                        if sub.matches(&delivery.routing_key) {
                            batch.push(Finished { partition, offset, id, delivery, dead: None });
                        } else {
                            let _ = done_tx.send(Finished { partition, offset, id, delivery, dead: None });
                        }
                        if batch.len() < sub.max_batch {
                            next = consumer.recv().now_or_never();
                        }
                    }
                    if batch.is_empty() {
                        drop(permit);
                        continue;
                    }
                    let handler = handler.clone();
                    let done_tx = done_tx.clone();
                    let abandon = abandon.clone();
                    let max = sub.max_deliveries;
                    tokio::spawn(async move {
                        let _permit = permit;
                        let mut pending = batch;
                        while !pending.is_empty() {
                            let deliveries: Vec<Delivery> =
                                pending.iter().map(|f| f.delivery.clone()).collect();
                            let results = tokio::select! {
                                r = handler.handle_batch(&deliveries) => r,
                                // Not finished, so never stored: read again by the group.
                                _ = abandon.cancelled() => return,
                            };
                            let results = super::answers(results, deliveries.len());
                            let mut retry = Vec::new();
                            for (mut f, result) in pending.into_iter().zip(results) {
                                match result {
                                    Ok(()) => {}
                                    Err(HandleError::Permanent(reason)) => f.dead = Some(reason),
                                    Err(HandleError::Transient(reason)) if f.delivery.attempt >= max => {
                                        f.dead = Some(format!("delivery limit reached: {reason}"));
                                    }
                                    Err(HandleError::Transient(reason)) => {
                                        tracing::info!(routing_key = %f.delivery.routing_key, %reason, attempt = f.delivery.attempt, "retrying message");
                                        retry.push(f);
                                        continue;
                                    }
                                }
                                let _ = done_tx.send(f);
                            }
                            if let Some(first) = retry.iter().map(|f| f.delivery.attempt).min() {
                                tokio::time::sleep(super::backoff(first - 1)).await;
                                for f in &mut retry {
                                    f.delivery.attempt += 1;
                                }
                            }
                            pending = retry;
                        }
                    });
                }
            }
        }
        // Drain: let running handlers finish within the grace, then abandon the rest.
        let drain = async {
            while running > 0 {
                match done_rx.recv().await {
                    Some(f) => {
                        running -= 1;
                        self.finish(&consumer, &mut in_flight, f, &shutdown).await;
                    }
                    None => break,
                }
            }
        };
        if tokio::time::timeout(sub.drain_timeout, drain)
            .await
            .is_err()
        {
            abandon.cancel();
        }
        drop(consumer);
        Ok(())
    }

    async fn health(&self) -> Result<(), String> {
        let client = self.producer();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn describe(&self) -> String {
        format!("kafka topic {}", self.topic)
    }

    async fn backlog(&self, group: &str) -> Result<u64, BusError> {
        let group = self.namespace.name(&format!("dialstack.{group}"));
        let reader = {
            let mut readers = self.lag_readers.lock().unwrap_or_else(|p| p.into_inner());
            match readers.get(&group) {
                Some(r) => r.clone(),
                None => {
                    let r: BaseConsumer = self
                        .config()
                        .set("group.id", &group)
                        .set("enable.auto.commit", "false")
                        .create()
                        .map_err(broker)?;
                    let r = Arc::new(r);
                    readers.insert(group, r.clone());
                    r
                }
            }
        };
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || group_lag(&reader, &topic))
            .await
            .map_err(broker)?
    }

    async fn prepare(&self, _sub: &Subscription) -> Result<(), BusError> {
        // Topics are created at connect; a new group reads from the earliest offset.
        Ok(())
    }

    async fn dead_letters(&self, _group: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        let consumer: StreamConsumer = self
            .config()
            .set(
                "group.id",
                format!("dialstack.dlq-reader.{}", uuid::Uuid::now_v7().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(broker)?;
        consumer.subscribe(&[&self.dlq]).map_err(broker)?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while out.len() < max {
            let next = tokio::time::timeout_at(deadline, consumer.recv()).await;
            let Ok(Ok(msg)) = next else { break };
            out.push(Delivery {
                routing_key: header(&msg, TYPE_HEADER).unwrap_or("").to_owned(),
                key: msg
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default(),
                payload: bytes::Bytes::copy_from_slice(msg.payload().unwrap_or(&[])),
                attempt: 0,
            });
        }
        close_in_background(consumer, false);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(url: &str, options: &BusOptions) -> Result<HashMap<&'static str, String>, BusError> {
        security(&ParsedUrl::parse(url)?, options).map(|v| v.into_iter().collect())
    }

    #[test]
    fn plaintext_unless_the_url_asks_for_more() {
        let p = props("kafka://k:9092?namespace=n", &BusOptions::default()).unwrap();
        assert_eq!(p["security.protocol"], "plaintext");
        assert_eq!(p.len(), 1);
        // A CA bundle from the variables is for TLS connections only.
        let with_ca = BusOptions {
            ca_file: Some("/nonexistent.pem".into()),
            ..Default::default()
        };
        assert_eq!(props("kafka://k:9092", &with_ca).unwrap().len(), 1);
    }

    #[test]
    fn sasl_credentials_come_from_the_url_or_the_variables() {
        let vars = BusOptions {
            sasl_username: Some("svc".into()),
            sasl_password: Some("from-vars".into()),
            ..Default::default()
        };
        let p = props(
            "kafka://k:9094?security_protocol=sasl_plaintext&sasl_mechanism=SCRAM-SHA-256",
            &vars,
        )
        .unwrap();
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-256");
        assert_eq!(p["sasl.username"], "svc");
        assert_eq!(p["sasl.password"], "from-vars");
        let p = props(
            "kafka://k:9094?security_protocol=sasl_plaintext&sasl_mechanism=PLAIN&sasl_password=from-url",
            &vars,
        )
        .unwrap();
        assert_eq!(p["sasl.password"], "from-url");

        let none = BusOptions::default();
        let url = "kafka://k:9094?security_protocol=sasl_ssl&sasl_mechanism=PLAIN";
        let err = props(url, &none).unwrap_err().to_string();
        assert!(err.contains("DIALSTACK_KAFKA_SASL_USERNAME"), "{err}");
        let err = props("kafka://k?security_protocol=sasl_ssl", &vars)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sasl_mechanism"), "{err}");
        assert!(props("kafka://k?sasl_username=u", &none).is_err());
    }

    #[test]
    fn an_unreadable_ca_file_is_named() {
        let err = props(
            "kafka://k:9093?security_protocol=ssl&ssl_ca=/nonexistent/ca.pem",
            &BusOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, BusError::Tls(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
