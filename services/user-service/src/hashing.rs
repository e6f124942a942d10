//! A bounded pool for password hashing. argon2id takes 19 MiB and tens of
//! milliseconds of one core per hash, so an unbounded number of parallel
//! logins would take all memory and all cores. Hashes run on a fixed set of
//! worker threads (so no more than `workers` hashes run at once); requests
//! wait in one of two
//! bounded queues, and one that finds its queue full is refused at once
//! ([`Busy`], a 503 with `Retry-After`). Each worker keeps one argon2 working
//! buffer ([`crate::domain::Scratch`]) for its whole life, so hashing holds
//! `workers` x 19 MiB, whatever the load.
//!
//! The `trusted` lane is served first: logins from an address the account
//! logged in from recently, and hashing done for authenticated callers, so an
//! owner gets through a storm of guesses from elsewhere.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Which queue a request waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Served first: known addresses and authenticated callers.
    Trusted,
    /// Everyone else.
    Other,
}

/// The queue was full (or the pool is shutting down): nothing was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password hashing is busy")]
pub struct Busy;

/// Why hashing a new password failed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// See [`Busy`].
    #[error(transparent)]
    Busy(#[from] Busy),
    /// argon2 refused (never for a valid password).
    #[error("hashing failed: {0}")]
    Failed(String),
}

/// Counters of the pool, also exported as metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Hashes running now.
    pub running: usize,
    /// The most that ever ran at once.
    pub peak: usize,
    /// Requests waiting.
    pub queued: usize,
}

/// The pool's metrics.
#[derive(Clone)]
pub struct PoolMetrics {
    /// `dialstack_password_hash_running`.
    pub running: prometheus::IntGauge,
    /// `dialstack_password_hash_running_peak`.
    pub peak: prometheus::IntGauge,
    /// `dialstack_password_hash_queued`.
    pub queued: prometheus::IntGauge,
    /// `dialstack_password_hash_rejected_total`.
    pub rejected: prometheus::IntCounter,
}

impl PoolMetrics {
    /// New, unregistered metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            running: prometheus::IntGauge::new(
                "dialstack_password_hash_running",
                "password hashes running now",
            )?,
            peak: prometheus::IntGauge::new(
                "dialstack_password_hash_running_peak",
                "the most password hashes that ran at once since start",
            )?,
            queued: prometheus::IntGauge::new(
                "dialstack_password_hash_queued",
                "password hash requests waiting for a worker",
            )?,
            rejected: prometheus::IntCounter::new(
                "dialstack_password_hash_rejected_total",
                "password hash requests refused because the queue was full",
            )?,
        })
    }
}

enum Work {
    Verify {
        password: String,
        hash: Option<String>,
    },
    Hash {
        password: String,
    },
}

enum Done {
    Verified(bool),
    Hashed(Result<String, String>),
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Done>,
}

#[derive(Default)]
struct Queues {
    trusted: VecDeque<Job>,
    other: VecDeque<Job>,
    closed: bool,
}

struct Inner {
    /// Waiting jobs by lane, and whether the pool is closing.
    queues: Mutex<Queues>,
    /// Signalled when a job is queued or the pool closes.
    ready: Condvar,
    /// Most jobs waiting in each lane.
    queue_cap: usize,
    /// Jobs running now (only worker threads change it).
    running: AtomicUsize,
    /// The highest `running` seen.
    peak: AtomicUsize,
    metrics: Option<PoolMetrics>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_queued(&self, q: &Queues) {
        if let Some(m) = &self.metrics {
            m.queued.set((q.trusted.len() + q.other.len()) as i64);
        }
    }
}

/// Closes the pool when the last handle goes.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.closed = true;
        // Waiting callers get `Busy` as their jobs drop.
        q.trusted.clear();
        q.other.clear();
        drop(q);
        self.0.ready.notify_all();
    }
}

/// The password hashing pool; clones share it, and its threads end when the
/// last clone is dropped.
#[derive(Clone)]
pub struct PasswordPool(Arc<Owner>);

impl std::fmt::Debug for PasswordPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl PasswordPool {
    /// Starts `workers` threads (at least one) with `queue_cap` waiting
    /// places per lane.
    pub fn start(workers: usize, queue_cap: usize, metrics: Option<PoolMetrics>) -> Self {
        let inner = Arc::new(Inner {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            queue_cap,
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            metrics,
        });
        for i in 0..workers.max(1) {
            let inner = inner.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || work(&inner));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self(Arc::new(Owner(inner)))
    }

    /// Verifies `password` against `hash`, or against a dummy hash when
    /// `hash` is `None` (an unknown user takes as long as a known one).
    pub async fn verify(
        &self,
        lane: Lane,
        password: &str,
        hash: Option<String>,
    ) -> Result<bool, Busy> {
        let work = Work::Verify {
            password: password.to_owned(),
            hash,
        };
        match self.submit(lane, work).await? {
            Done::Verified(ok) => Ok(ok),
            Done::Hashed(_) => Ok(false),
        }
    }

    /// Hashes a new password.
    pub async fn hash(&self, lane: Lane, password: &str) -> Result<String, HashError> {
        let work = Work::Hash {
            password: password.to_owned(),
        };
        match self.submit(lane, work).await? {
            Done::Hashed(r) => r.map_err(HashError::Failed),
            Done::Verified(_) => Err(HashError::Failed("unexpected answer".into())),
        }
    }

    /// What runs and waits now.
    pub fn stats(&self) -> PoolStats {
        let inner = &self.0 .0;
        let q = inner.lock();
        PoolStats {
            running: inner.running.load(Ordering::SeqCst),
            peak: inner.peak.load(Ordering::SeqCst),
            queued: q.trusted.len() + q.other.len(),
        }
    }

    async fn submit(&self, lane: Lane, work: Work) -> Result<Done, Busy> {
        let inner = &self.0 .0;
        let (reply, answer) = oneshot::channel();
        {
            let mut q = inner.lock();
            let full = q.closed
                || match lane {
                    Lane::Trusted => q.trusted.len() >= inner.queue_cap,
                    Lane::Other => q.other.len() >= inner.queue_cap,
                };
            if full {
                if let Some(m) = &inner.metrics {
                    m.rejected.inc();
                }
                return Err(Busy);
            }
            let job = Job { work, reply };
            match lane {
                Lane::Trusted => q.trusted.push_back(job),
                Lane::Other => q.other.push_back(job),
            }
            inner.set_queued(&q);
        }
        inner.ready.notify_one();
        answer.await.map_err(|_| Busy)
    }
}

/// A worker thread: takes trusted jobs first, skips jobs whose caller has
/// gone, until the pool closes.
fn work(inner: &Inner) {
    let mut scratch = crate::domain::Scratch::default();
    loop {
        let job = {
            let mut q = inner.lock();
            loop {
                if q.closed {
                    return;
                }
                if let Some(job) = q.trusted.pop_front().or_else(|| q.other.pop_front()) {
                    inner.set_queued(&q);
                    break job;
                }
                q = inner.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        if job.reply.is_closed() {
            continue;
        }
        let now = inner.running.fetch_add(1, Ordering::SeqCst) + 1;
        let peak = inner.peak.fetch_max(now, Ordering::SeqCst).max(now);
        if let Some(m) = &inner.metrics {
            m.running.set(now as i64);
            m.peak.set(peak as i64);
        }
        let done =
            match job.work {
                Work::Verify { password, hash } => Done::Verified(
                    crate::domain::verify_password_with(&mut scratch, &password, hash.as_deref()),
                ),
                Work::Hash { password } => {
                    Done::Hashed(crate::domain::hash_password_with(&mut scratch, &password))
                }
            };
        let left = inner.running.fetch_sub(1, Ordering::SeqCst) - 1;
        if let Some(m) = &inner.metrics {
            m.running.set(left as i64);
        }
        let _ = job.reply.send(done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn never_runs_more_than_its_workers_and_refuses_beyond_the_queue() {
        let pool = PasswordPool::start(2, 3, None);
        let hash = crate::domain::hash_password_now("correct horse battery").unwrap();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let pool = pool.clone();
            let hash = hash.clone();
            tasks.push(tokio::spawn(async move {
                pool.verify(Lane::Other, &format!("guess {i}"), Some(hash))
                    .await
            }));
        }
        let mut busy = 0;
        let mut checked = 0;
        for t in tasks {
            match t.await.unwrap() {
                Err(Busy) => busy += 1,
                Ok(ok) => {
                    assert!(!ok);
                    checked += 1;
                }
            }
        }
        let stats = pool.stats();
        assert!(
            stats.peak <= 2,
            "ran at most the workers at once: {stats:?}"
        );
        assert_eq!(stats.running + stats.queued, 0);
        assert!(busy > 0, "a burst of 40 overflows 2 workers + 3 places");
        assert_eq!(busy + checked, 40);
        assert!(
            checked >= 3,
            "at least the queue's places were served: {checked}"
        );
        // The trusted lane has its own places: it is served though the
        // other lane was full a moment ago.
        assert_eq!(
            pool.verify(Lane::Trusted, "correct horse battery", Some(hash))
                .await,
            Ok(true)
        );
    }

    #[tokio::test]
    async fn trusted_jobs_go_first() {
        let pool = PasswordPool::start(1, 8, None);
        let hash = crate::domain::hash_password_now("correct horse battery").unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, lane) in [Lane::Other, Lane::Other, Lane::Other, Lane::Trusted]
            .into_iter()
            .enumerate()
        {
            let (pool, hash, order) = (pool.clone(), hash.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                pool.verify(lane, "x", Some(hash)).await.unwrap();
                order.lock().unwrap().push(i);
            }));
            // Queue them in this order.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let trusted_at = order.iter().position(|&i| i == 3).unwrap();
        assert!(
            trusted_at <= 1,
            "trusted job served before queued others: {order:?}"
        );
    }

    #[tokio::test]
    async fn hashes_verify_through_the_pool() {
        let pool = PasswordPool::start(1, 4, None);
        let h = pool
            .hash(Lane::Trusted, "correct horse battery")
            .await
            .unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert_eq!(
            pool.verify(Lane::Other, "correct horse battery", Some(h.clone()))
                .await,
            Ok(true)
        );
        assert_eq!(
            pool.verify(Lane::Other, "wrong horse battery", Some(h))
                .await,
            Ok(false)
        );
        assert_eq!(pool.verify(Lane::Other, "anything", None).await, Ok(false));
    }
}
