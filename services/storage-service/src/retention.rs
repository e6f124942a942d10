//! The retention sweep: every `DIALSTACK_RECORDING_SWEEP_SECS` it deletes
//! the recordings whose `delete_after` has passed, object first and row
//! second, at most [`BATCH`] per pass (passes repeat while they come back
//! full). At least once: a pass interrupted between the two deletes leaves
//! the row, and the next pass deletes the (missing) object again, which
//! succeeds. Each deleted recording counts in
//! `dialstack_recordings_deleted_total`.

use std::time::Duration;

use dialstack_common::recordings::{RecordingError, RecordingStore};
use tokio_util::sync::CancellationToken;

use crate::db::Repo;

/// Recordings deleted per pass at most.
pub const BATCH: i64 = 200;
/// How far a recording whose object cannot be ours (its URL is not in the
/// configured store) is put off, so it does not block every pass.
const POSTPONE_FOREIGN_MS: i64 = 86_400_000;

/// Deletes expired recordings.
#[derive(Clone)]
pub struct Sweeper {
    /// Recording rows.
    pub repo: Repo,
    /// Their objects.
    pub store: RecordingStore,
    /// `dialstack_recordings_deleted_total`.
    pub deleted: prometheus::IntCounter,
}

impl Sweeper {
    /// The counter, unregistered.
    pub fn counter() -> prometheus::Result<prometheus::IntCounter> {
        prometheus::IntCounter::new(
            "dialstack_recordings_deleted_total",
            "recordings deleted by the retention sweep (object and row)",
        )
    }

    /// One pass over at most [`BATCH`] expired recordings; returns how many
    /// were deleted. A store that fails ends the pass (the rest wait for the
    /// next one); a URL outside the store is logged and put off a day.
    pub async fn sweep_once(&self) -> anyhow::Result<usize> {
        let now = dialstack_common::now_ms();
        let due = self.repo.expired_recordings(now, BATCH).await?;
        let mut deleted = 0;
        for rec in due {
            match self.store.delete(&rec.url).await {
                Ok(()) => {}
                Err(e @ (RecordingError::Foreign(_) | RecordingError::BadKey { .. })) => {
                    tracing::warn!(call_id = %rec.call_id, error = %e, "expired recording not in the configured store, kept");
                    self.repo
                        .postpone_recording_delete(&rec.call_id, now + POSTPONE_FOREIGN_MS)
                        .await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            if self
                .repo
                .delete_recording(&rec.call_id, &rec.url, now)
                .await?
            {
                deleted += 1;
                self.deleted.inc();
                tracing::info!(call_id = %rec.call_id, "expired recording deleted");
            }
        }
        Ok(deleted)
    }

    /// Sweeps every `period` until `shutdown`.
    pub async fn run(self, period: Duration, shutdown: CancellationToken) {
        loop {
            loop {
                let pass = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    pass = self.sweep_once() => pass,
                };
                match pass {
                    Ok(n) if n as i64 >= BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "recording sweep failed");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }
}
