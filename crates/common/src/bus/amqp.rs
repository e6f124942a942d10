//! RabbitMQ backend (lapin). Publishing uses publisher confirms on a channel
//! that is re-opened after a broker failure; consuming uses one durable quorum
//! queue per group (`dialstack.<group>`), manual acks, a prefetch of the
//! consumer's concurrency times its batch size, a delivery limit, and a dead-letter queue
//! `dialstack.<group>.dlq` behind the exchange `dialstack.dlx`.
//!
//! `amqps://` connects over TLS (rustls): the broker's certificate must chain
//! to the system's CAs or to the URL's `ssl_ca=` bundle (else the
//! [`BusOptions`] one), and name the URL's host.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{
    Backend, BatchHandler, BusError, BusOptions, Delivery, HandleError, OutMessage, ParsedUrl,
    Subscription,
};

pub(crate) struct AmqpBackend {
    uri: String,
    /// Extra CAs (PEM) trusted for `amqps://`, read at start.
    ca_pem: Option<String>,
    exchange: String,
    parsed: ParsedUrl,
    /// The publishing connection and confirm-mode channel; `None` after a failure.
    publisher: Mutex<Option<(Connection, lapin::Channel)>>,
}

fn broker(e: impl std::fmt::Display) -> BusError {
    BusError::Broker(e.to_string())
}

/// How long one try to open a connection to the broker may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Tries to open a connection that hangs (neither opens nor fails) before
/// giving up. A refused or rejected connection fails at once; a hung one
/// (a SYN lost to a full accept queue, a handshake that never starts) is
/// abandoned after [`CONNECT_TIMEOUT`] and tried again on a new socket.
pub const CONNECT_TRIES: u32 = 3;
/// How long a publish may wait for the broker's confirm (a broker under a
/// memory or disk alarm blocks publishers without refusing them).
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn open(uri: &str, ca_pem: Option<&str>) -> Result<Connection, BusError> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let tls = || lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: ca_pem.map(str::to_owned),
    };
    for attempt in 1..=CONNECT_TRIES {
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect_with_config(uri, props.clone(), tls()),
        )
        .await
        {
            Ok(r) => return r.map_err(broker),
            Err(_) => tracing::warn!(
                attempt,
                timeout_secs = CONNECT_TIMEOUT.as_secs(),
                "connection to the broker neither opened nor failed in time, trying a new one"
            ),
        }
    }
    Err(BusError::Broker(format!(
        "no connection to the broker in {CONNECT_TRIES} tries of {CONNECT_TIMEOUT:?}"
    )))
}

async fn declare_exchange(
    ch: &lapin::Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), BusError> {
    ch.exchange_declare(
        name,
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(broker)
}

impl AmqpBackend {
    pub(crate) async fn connect(
        parsed: &ParsedUrl,
        logical: &str,
        options: &BusOptions,
    ) -> Result<Self, BusError> {
        let ca_file = match parsed.scheme.as_str() {
            "amqps" => parsed.ssl_ca.as_ref().or(options.ca_file.as_ref()),
            _ => None,
        };
        let ca_pem = ca_file
            .map(|path| crate::tls::read_ca_file(path))
            .transpose()
            .map_err(|e| BusError::Tls(e.to_string()))?;
        let backend = Self {
            uri: format!("{}://{}", parsed.scheme, parsed.rest),
            ca_pem,
            exchange: parsed.name(logical),
            parsed: parsed.clone(),
            publisher: Mutex::new(None),
        };
        // Fail fast at start when the broker is unreachable.
        let mut guard = backend.publisher.lock().await;
        *guard = Some(backend.open_publisher().await?);
        drop(guard);
        Ok(backend)
    }

    async fn open_publisher(&self) -> Result<(Connection, lapin::Channel), BusError> {
        let conn = open(&self.uri, self.ca_pem.as_deref()).await?;
        let ch = conn.create_channel().await.map_err(broker)?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker)?;
        declare_exchange(&ch, &self.exchange, ExchangeKind::Topic).await?;
        Ok((conn, ch))
    }

    async fn publisher_channel(&self) -> Result<lapin::Channel, BusError> {
        let mut guard = self.publisher.lock().await;
        if let Some((conn, ch)) = guard.as_ref() {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        *guard = None;
        let (conn, ch) = self.open_publisher().await?;
        *guard = Some((conn, ch.clone()));
        Ok(ch)
    }

    fn queue_name(&self, group: &str) -> String {
        self.parsed.name(&format!("dialstack.{group}"))
    }

    /// Declares the exchange, the dead-letter exchange and queue, the group's
    /// quorum queue and its bindings; returns the queue name.
    async fn declare(&self, ch: &lapin::Channel, sub: &Subscription) -> Result<String, BusError> {
        declare_exchange(ch, &self.exchange, ExchangeKind::Topic).await?;
        let dlx = self.parsed.name("dialstack.dlx");
        declare_exchange(ch, &dlx, ExchangeKind::Direct).await?;
        let queue = self.queue_name(&sub.group);
        let dlq = format!("{queue}.dlq");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut dlq_args = FieldTable::default();
        dlq_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        // An instance's queues go with the instance; a test namespace's
        // with the test.
        let expires = [
            self.parsed.queue_expires_ms,
            sub.instance_expires.map(|d| d.as_millis() as i64),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(ms) = expires {
            dlq_args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        ch.queue_declare(&dlq, durable, dlq_args)
            .await
            .map_err(broker)?;
        ch.queue_bind(
            &dlq,
            &dlx,
            &queue,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker)?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if let Some(ms) = expires {
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(sub.max_deliveries.saturating_sub(1) as i32),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(dlx.clone())),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(queue.clone())),
        );
        ch.queue_declare(&queue, durable, args)
            .await
            .map_err(broker)?;
        for b in &sub.bindings {
            ch.queue_bind(
                &queue,
                &self.exchange,
                b,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        }
        Ok(queue)
    }

    async fn consume_once(
        &self,
        sub: &Subscription,
        handler: &Arc<dyn BatchHandler>,
        shutdown: &CancellationToken,
    ) -> Result<(), BusError> {
        let conn = open(&self.uri, self.ca_pem.as_deref()).await?;
        let ch = conn.create_channel().await.map_err(broker)?;
        let queue = self.declare(&ch, sub).await?;
        ch.basic_qos(
            sub.concurrency
                .saturating_mul(sub.max_batch)
                .min(u16::MAX as usize) as u16,
            BasicQosOptions::default(),
        )
        .await
        .map_err(broker)?;
        let mut consumer = ch
            .basic_consume(
                &queue,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        tracing::info!(%queue, "consuming");

        let permits = Arc::new(Semaphore::new(sub.concurrency));
        let tasks = tokio_util::task::TaskTracker::new();
        let abandon = CancellationToken::new();
        let result = loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                n = consumer.next() => n,
            };
            let first = match next {
                None => break Err(BusError::Broker("consumer stream ended".into())),
                Some(Err(e)) => break Err(broker(e)),
                Some(Ok(d)) => d,
            };
            // Waiting for a free handler must not outlast shutdown: a handler
            // that never returns would otherwise keep the consumer alive. The
            // delivery in hand stays unacknowledged and is redelivered.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break Ok(()),
                },
            };
            // What else the broker has already sent joins the batch.
            let mut batch = vec![first];
            let mut failed = None;
            while batch.len() < sub.max_batch {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(d))) => batch.push(d),
                    Some(Some(Err(e))) => {
                        failed = Some(broker(e));
                        break;
                    }
                    Some(None) => {
                        failed = Some(BusError::Broker("consumer stream ended".into()));
                        break;
                    }
                    None => break,
                }
            }
            let handler = handler.clone();
            let abandon = abandon.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let msgs: Vec<Delivery> = batch.iter().map(to_delivery).collect();
                let results = tokio::select! {
                    r = handler.handle_batch(&msgs) => r,
                    // Left unacknowledged: the broker redelivers when the channel closes.
                    _ = abandon.cancelled() => return,
                };
                let results = super::answers(results, msgs.len());
                let mut retry = Vec::new();
                for ((delivery, msg), result) in batch.into_iter().zip(msgs).zip(results) {
                    let outcome = match result {
                        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                        Err(HandleError::Permanent(reason)) => {
                            tracing::warn!(routing_key = %msg.routing_key, %reason, "message dead-lettered");
                            delivery
                                .nack(BasicNackOptions {
                                    requeue: false,
                                    ..Default::default()
                                })
                                .await
                        }
                        Err(HandleError::Transient(reason)) => {
                            tracing::info!(routing_key = %msg.routing_key, %reason, attempt = msg.attempt, "message will be redelivered");
                            retry.push((delivery, msg.attempt));
                            Ok(())
                        }
                    };
                    if let Err(e) = outcome {
                        tracing::warn!(error = %e, "ack failed; the broker will redeliver");
                    }
                }
                if let Some(first) = retry.iter().map(|(_, a)| *a).min() {
                    tokio::time::sleep(super::backoff(first.saturating_sub(1))).await;
                    for (delivery, _) in retry {
                        let requeued = delivery
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await;
                        if let Err(e) = requeued {
                            tracing::warn!(error = %e, "nack failed; the broker will redeliver");
                        }
                    }
                }
            });
            if let Some(e) = failed {
                break Err(e);
            }
        };
        tasks.close();
        if tokio::time::timeout(sub.drain_timeout, tasks.wait())
            .await
            .is_err()
        {
            abandon.cancel();
            tasks.wait().await;
        }
        let _ = ch.close(200, "consumer stopping").await;
        let _ = conn.close(200, "consumer stopping").await;
        result
    }
}

/// The handler's view of a delivery: `attempt` from the quorum queue's
/// `x-delivery-count`.
fn to_delivery(delivery: &lapin::message::Delivery) -> Delivery {
    let count = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => Some(n as u32),
            AMQPValue::LongInt(n) => Some(n as u32),
            AMQPValue::LongUInt(n) => Some(n),
            AMQPValue::ShortInt(n) => Some(n as u32),
            _ => None,
        })
        .unwrap_or(0);
    Delivery {
        routing_key: delivery.routing_key.as_str().to_owned(),
        key: delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|s: &ShortString| s.as_str().to_owned())
            .unwrap_or_default(),
        payload: bytes::Bytes::from(delivery.data.clone()),
        attempt: count + 1,
    }
}

#[async_trait::async_trait]
impl Backend for AmqpBackend {
    async fn publish(&self, msg: &OutMessage) -> Result<(), BusError> {
        let ch = self.publisher_channel().await?;
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(msg.id.clone().into())
            .with_correlation_id(msg.key.clone().into())
            .with_content_type("application/cloudevents+json".into());
        let publish = async {
            ch.basic_publish(
                &self.exchange,
                &msg.routing_key,
                BasicPublishOptions::default(),
                &msg.payload,
                props,
            )
            .await
            .map_err(broker)?
            .await
            .map_err(broker)
        };
        let confirm = match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
            Ok(r) => r?,
            Err(_) => {
                // The channel may be blocked (flow control, a resource
                // alarm): the next publish opens a fresh one.
                *self.publisher.lock().await = None;
                return Err(BusError::Broker(format!(
                    "no publish confirm within {CONFIRM_TIMEOUT:?}"
                )));
            }
        };
        match confirm {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => Err(BusError::Broker("publish nacked by broker".into())),
        }
    }

    async fn consume(
        &self,
        sub: Subscription,
        handler: Arc<dyn BatchHandler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let mut failures = 0;
        loop {
            match self.consume_once(&sub, &handler, &shutdown).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, group = %sub.group, "consumer lost the broker, reconnecting");
                    failures += 1;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(super::backoff(failures)) => {}
            }
        }
    }

    async fn health(&self) -> Result<(), String> {
        self.publisher_channel()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!("amqp exchange {}", self.exchange)
    }

    async fn backlog(&self, group: &str) -> Result<u64, BusError> {
        // A passive declare on a channel of its own: if the queue is missing
        // the broker closes that channel, never the publisher's.
        self.publisher_channel().await?;
        let ch = {
            let guard = self.publisher.lock().await;
            match guard.as_ref() {
                Some((conn, _)) => conn.create_channel().await.map_err(broker)?,
                None => return Err(BusError::Broker("no connection".into())),
            }
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = ch
            .queue_declare(&self.queue_name(group), passive, FieldTable::default())
            .await
            .map_err(broker);
        if queue.is_ok() {
            let _ = ch.close(200, "backlog read").await;
        }
        Ok(u64::from(queue?.message_count()))
    }

    async fn prepare(&self, sub: &Subscription) -> Result<(), BusError> {
        let conn = open(&self.uri, self.ca_pem.as_deref()).await?;
        let ch = conn.create_channel().await.map_err(broker)?;
        let declared = self.declare(&ch, sub).await;
        let _ = conn.close(200, "declared").await;
        declared.map(|_| ())
    }

    async fn dead_letters(&self, group: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        let conn = open(&self.uri, self.ca_pem.as_deref()).await?;
        let ch = conn.create_channel().await.map_err(broker)?;
        let dlq = format!("{}.dlq", self.queue_name(group));
        let mut out = Vec::new();
        while out.len() < max {
            let got = ch
                .basic_get(&dlq, lapin::options::BasicGetOptions { no_ack: false })
                .await
                .map_err(broker)?;
            let Some(m) = got else { break };
            out.push(Delivery {
                routing_key: m.delivery.routing_key.as_str().to_owned(),
                key: String::new(),
                payload: bytes::Bytes::from(m.delivery.data.clone()),
                attempt: 0,
            });
        }
        // Closing without acknowledging puts them back.
        let _ = ch.close(200, "peeked").await;
        let _ = conn.close(200, "peeked").await;
        Ok(out)
    }
}
