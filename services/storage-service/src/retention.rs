//! The retention sweep: every `DIALSTACK_RECORDING_SWEEP_SECS` it deletes
//! the recordings whose `delete_after` has passed (or, for a recording whose
//! campaign set no retention, that are older than
//! `DIALSTACK_RECORDING_RETENTION_DAYS`), object first and row second, then
//! the CDRs past their campaign's `cdr_retention_days` (or
//! `DIALSTACK_CDR_RETENTION_DAYS`) that no longer have a recording, at most
//! [`BATCH`] of each per pass (passes repeat while they come back full), each
//! batch its own short statement. At least once: a pass interrupted between
//! a recording's two deletes leaves the row, and the next pass deletes the
//! (missing) object again, which succeeds. Deletions count in
//! `dialstack_storage_deleted_total{kind="recording"|"cdr"}`.

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
    /// `dialstack_storage_deleted_total{kind}`.
    pub deleted: prometheus::IntCounterVec,
    /// Default CDR retention (days); `None` keeps.
    pub cdr_retention_days: Option<u32>,
    /// Default recording retention (days); `None` keeps.
    pub recording_retention_days: Option<u32>,
}

impl Sweeper {
    /// The counter, unregistered.
    pub fn counter() -> prometheus::Result<prometheus::IntCounterVec> {
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "dialstack_storage_deleted_total",
                "rows deleted by the retention sweep, by kind (recording: object and row; cdr)",
            ),
            &["kind"],
        )?;
        // Both series exist from the start, at 0.
        for kind in ["cdr", "recording"] {
            c.with_label_values(&[kind]);
        }
        Ok(c)
    }

    /// One pass: recordings, then CDRs; returns (recordings, CDRs) deleted.
    pub async fn pass(&self) -> anyhow::Result<(usize, usize)> {
        let recordings = self.sweep_once().await?;
        let cdrs = self.sweep_cdrs_once().await?;
        Ok((recordings, cdrs))
    }

    /// Deletes at most [`BATCH`] expired CDRs; returns how many.
    pub async fn sweep_cdrs_once(&self) -> anyhow::Result<usize> {
        let now = dialstack_common::now_ms();
        let due = self
            .repo
            .expired_cdrs(now, self.cdr_retention_days, BATCH)
            .await?;
        let n = self.repo.delete_cdrs(&due).await?;
        if n > 0 {
            self.deleted.with_label_values(&["cdr"]).inc_by(n);
            tracing::info!(cdrs = n, "expired call records deleted");
        }
        Ok(due.len())
    }

    /// One pass over at most [`BATCH`] expired recordings; returns how many
    /// were deleted. A store that fails ends the pass (the rest wait for the
    /// next one); a URL outside the store is logged and put off a day.
    pub async fn sweep_once(&self) -> anyhow::Result<usize> {
        let now = dialstack_common::now_ms();
        let default_cutoff = self
            .recording_retention_days
            .map(|d| now.saturating_sub(i64::from(d) * crate::db::retention::DAY_MS));
        let due = self
            .repo
            .expired_recordings(now, default_cutoff, BATCH)
            .await?;
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
                .delete_recording(&rec.call_id, &rec.url, now, default_cutoff)
                .await?
            {
                deleted += 1;
                self.deleted.with_label_values(&["recording"]).inc();
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
                    pass = self.pass() => pass,
                };
                match pass {
                    Ok((r, c)) if r as i64 >= BATCH || c as i64 >= BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "retention sweep failed");
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
