//! In-process backend for `dialstack up` and unit tests. A channel is a named
//! broker in a process-wide registry; each consumer group gets its own queue
//! (like an AMQP queue bound to a topic exchange); competing consumers of one
//! group share it. Messages published while no group matches are dropped, as
//! an exchange with no bound queue would.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{
    Backend, BatchHandler, BusError, Delivery, HandleError, OutMessage, ParsedUrl, Subscription,
};

static BROKERS: LazyLock<Mutex<HashMap<String, Arc<Broker>>>> = LazyLock::new(Default::default);

#[derive(Default)]
struct Broker {
    /// Queues by group name.
    groups: Mutex<HashMap<String, Arc<GroupQueue>>>,
    /// Set by tests to simulate a broker outage: publishing fails.
    down: std::sync::atomic::AtomicBool,
}

struct GroupQueue {
    bindings: Vec<String>,
    /// Messages waiting for a consumer.
    queue: Mutex<VecDeque<Delivery>>,
    /// Dead-lettered messages, kept for inspection.
    dead: Mutex<Vec<Delivery>>,
    notify: Notify,
}

impl GroupQueue {
    fn push_back(&self, d: Delivery) {
        lock(&self.queue).push_back(d);
        self.notify.notify_one();
    }
    fn push_front(&self, d: Delivery) {
        lock(&self.queue).push_front(d);
        self.notify.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct MemoryBackend {
    name: String,
    broker: Arc<Broker>,
}

impl MemoryBackend {
    pub(crate) fn new(url: &ParsedUrl, logical: &str) -> Self {
        let name = format!("{}/{}", url.rest, url.name(logical));
        let broker = lock(&BROKERS).entry(name.clone()).or_default().clone();
        Self { name, broker }
    }
}

/// Simulates an outage of the memory channel `url`/`logical`: while down,
/// publishing fails as it would with an unreachable broker.
pub fn set_down(url: &str, logical: &str, down: bool) {
    if let Ok(parsed) = ParsedUrl::parse(url) {
        MemoryBackend::new(&parsed, logical)
            .broker
            .down
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

impl MemoryBackend {
    fn group(&self, sub: &Subscription) -> Arc<GroupQueue> {
        lock(&self.broker.groups)
            .entry(sub.group.clone())
            .or_insert_with(|| {
                Arc::new(GroupQueue {
                    bindings: sub.bindings.clone(),
                    queue: Mutex::new(VecDeque::new()),
                    dead: Mutex::new(Vec::new()),
                    notify: Notify::new(),
                })
            })
            .clone()
    }
}

/// Puts messages back when their handler is dropped before finishing (the
/// consumer died or shutdown abandoned it).
struct InFlight {
    queue: Arc<GroupQueue>,
    deliveries: Vec<Delivery>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Front of the queue, in their order.
        for mut d in self.deliveries.drain(..).rev() {
            d.attempt += 1;
            self.queue.push_front(d);
        }
    }
}

#[async_trait::async_trait]
impl Backend for MemoryBackend {
    async fn publish(&self, msg: &OutMessage) -> Result<(), BusError> {
        if self.broker.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BusError::Broker("memory broker is down".into()));
        }
        let groups: Vec<_> = lock(&self.broker.groups).values().cloned().collect();
        for g in groups {
            if g.bindings
                .iter()
                .any(|b| super::topic_matches(b, &msg.routing_key))
            {
                g.push_back(Delivery {
                    routing_key: msg.routing_key.clone(),
                    key: msg.key.clone(),
                    payload: msg.payload.clone(),
                    attempt: 1,
                });
            }
        }
        Ok(())
    }

    async fn consume(
        &self,
        sub: Subscription,
        handler: Arc<dyn BatchHandler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let queue = self.group(&sub);
        let permits = Arc::new(Semaphore::new(sub.concurrency));
        let tasks = tokio_util::task::TaskTracker::new();
        let abandon = CancellationToken::new();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let batch: Vec<Delivery> = {
                let mut q = lock(&queue.queue);
                let n = q.len().min(sub.max_batch);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                drop(permit);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = queue.notify.notified() => continue,
                    // A notification may race with a pop; poll now and then.
                    _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => continue,
                }
            }
            let handler = handler.clone();
            let queue = queue.clone();
            let max = sub.max_deliveries;
            let abandon = abandon.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let mut guard = InFlight {
                    queue: queue.clone(),
                    deliveries: batch.clone(),
                };
                let results = tokio::select! {
                    r = handler.handle_batch(&batch) => r,
                    _ = abandon.cancelled() => return, // guard requeues
                };
                guard.deliveries.clear();
                let n = batch.len();
                let mut retry = Vec::new();
                for (delivery, result) in batch.into_iter().zip(super::answers(results, n)) {
                    match result {
                        Ok(()) => {}
                        Err(HandleError::Permanent(reason)) => {
                            tracing::warn!(routing_key = %delivery.routing_key, %reason, "message dead-lettered");
                            lock(&queue.dead).push(delivery);
                        }
                        Err(HandleError::Transient(reason)) if delivery.attempt >= max => {
                            tracing::warn!(routing_key = %delivery.routing_key, %reason, attempts = delivery.attempt, "delivery limit reached, message dead-lettered");
                            lock(&queue.dead).push(delivery);
                        }
                        Err(HandleError::Transient(reason)) => {
                            tracing::info!(routing_key = %delivery.routing_key, %reason, "message will be redelivered");
                            retry.push(delivery);
                        }
                    }
                }
                if let Some(first) = retry.iter().map(|d| d.attempt).min() {
                    tokio::time::sleep(super::backoff(first)).await;
                    for mut d in retry {
                        d.attempt += 1;
                        queue.push_back(d);
                    }
                }
            });
        }
        tasks.close();
        if tokio::time::timeout(sub.drain_timeout, tasks.wait())
            .await
            .is_err()
        {
            abandon.cancel();
            tasks.wait().await;
        }
        Ok(())
    }

    async fn health(&self) -> Result<(), String> {
        if self.broker.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("memory broker is down".into());
        }
        Ok(())
    }

    async fn prepare(&self, sub: &Subscription) -> Result<(), BusError> {
        self.group(sub);
        Ok(())
    }

    async fn dead_letters(&self, group: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        let groups = lock(&self.broker.groups);
        Ok(groups
            .get(group)
            .map(|g| lock(&g.dead).iter().take(max).cloned().collect())
            .unwrap_or_default())
    }

    async fn backlog(&self, group: &str) -> Result<u64, BusError> {
        let groups = lock(&self.broker.groups);
        Ok(groups
            .get(group)
            .map(|g| lock(&g.queue).len() as u64)
            .unwrap_or(0))
    }

    fn describe(&self) -> String {
        format!("memory://{}", self.name)
    }
}
