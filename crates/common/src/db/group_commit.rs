//! Group commit: small writes submitted concurrently from many tasks are
//! applied together, in order, in one transaction, so that a burst of N
//! writes costs one commit (one log flush) instead of N.
//!
//! [`GroupCommit::submit`] returns only after the transaction holding the
//! write has committed, so a caller may go on exactly as if it had committed
//! its own transaction (publish, acknowledge, place the call). If a batch
//! fails as a whole (a deadlock, a bad row), each of its writes is retried
//! alone in a transaction of its own, so one failing write never fails the
//! others.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::{Db, Tx};

/// Applies a batch of writes of one kind inside a transaction.
#[async_trait::async_trait]
pub trait BatchWrite: Send + Sync + 'static {
    /// One write.
    type Op: Send + Sync + 'static;
    /// What a write returns to its caller.
    type Out: Send + 'static;
    /// Applies `ops`, in order, inside `tx` (never commits it); returns one
    /// output per op, in order.
    async fn write(&self, tx: &mut Tx, ops: &[Self::Op]) -> Result<Vec<Self::Out>, sqlx::Error>;
}

/// Why a submitted write did not commit.
#[derive(Debug, thiserror::Error)]
pub enum GroupCommitError {
    /// The database refused the write (alone, after the batch failed).
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// The writer returned the wrong number of outputs (a bug in the writer).
    #[error("writer returned {got} results for {want} writes")]
    Mismatch {
        /// Outputs returned.
        got: usize,
        /// Writes given.
        want: usize,
    },
    /// The group-commit workers are gone (the runtime is shutting down).
    #[error("group commit stopped")]
    Stopped,
}

/// Sizing of a [`GroupCommit`].
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitOptions {
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// Transactions in flight at once: while one commits, the next batch
    /// is being gathered and written.
    pub workers: usize,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            workers: 2,
        }
    }
}

struct Pending<W: BatchWrite> {
    op: W::Op,
    reply: oneshot::Sender<Result<W::Out, GroupCommitError>>,
}

/// Submits writes to be group-committed by background workers. Cheap to
/// clone; the workers stop once every clone is dropped.
pub struct GroupCommit<W: BatchWrite> {
    queue: mpsc::UnboundedSender<Pending<W>>,
}

impl<W: BatchWrite> Clone for GroupCommit<W> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<W: BatchWrite> std::fmt::Debug for GroupCommit<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

impl<W: BatchWrite> GroupCommit<W> {
    /// Starts the workers on the current runtime.
    pub fn start(db: Db, writer: W, opts: GroupCommitOptions) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        let writer = Arc::new(writer);
        for _ in 0..opts.workers.max(1) {
            tokio::spawn(worker(
                db.clone(),
                writer.clone(),
                rx.clone(),
                opts.max_batch.max(1),
            ));
        }
        Self { queue }
    }

    /// Applies `op` and returns its output once its transaction committed.
    pub async fn submit(&self, op: W::Op) -> Result<W::Out, GroupCommitError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { op, reply })
            .map_err(|_| GroupCommitError::Stopped)?;
        answer.await.map_err(|_| GroupCommitError::Stopped)?
    }
}

async fn worker<W: BatchWrite>(
    db: Db,
    writer: Arc<W>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Pending<W>>>>,
    max_batch: usize,
) {
    loop {
        // One worker gathers at a time: it takes what is queued now, up to
        // the limit, and lets the next worker gather while it writes.
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            batch
        };
        let (ops, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.op, p.reply)).unzip();
        match write_and_commit(&db, writer.as_ref(), &ops).await {
            Ok(outs) => {
                for (reply, out) in replies.into_iter().zip(outs) {
                    let _ = reply.send(Ok(out));
                }
            }
            Err(e) if ops.len() == 1 => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, writes = ops.len(), "group commit failed, writing one at a time");
                for (op, reply) in ops.iter().zip(replies) {
                    let one = write_and_commit(&db, writer.as_ref(), std::slice::from_ref(op))
                        .await
                        .and_then(|mut outs| outs.pop().ok_or(GroupCommitError::Stopped));
                    let _ = reply.send(one);
                }
            }
        }
    }
}

async fn write_and_commit<W: BatchWrite>(
    db: &Db,
    writer: &W,
    ops: &[W::Op],
) -> Result<Vec<W::Out>, GroupCommitError> {
    let mut tx = db.begin().await?;
    let outs = writer.write(&mut tx, ops).await?;
    if outs.len() != ops.len() {
        return Err(GroupCommitError::Mismatch {
            got: outs.len(),
            want: ops.len(),
        });
    }
    tx.commit().await?;
    Ok(outs)
}
