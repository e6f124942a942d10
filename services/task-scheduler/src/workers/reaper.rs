//! The reaper: attempts no media processor will finish, and idempotency
//! keys past their day.

use std::sync::Arc;
use std::time::Duration;

use dialstack_common::db::OutboxRelay;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::Repo;

/// Every second until shutdown, resolves attempts that no media processor
/// will finish ([`Repo::reap_stuck`]).
pub async fn run_reaper(
    repo: Repo,
    relay: OutboxRelay,
    wake: Arc<Notify>,
    queued_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut last_sweep = std::time::Instant::now();
    loop {
        if last_sweep.elapsed() > Duration::from_secs(60) {
            last_sweep = std::time::Instant::now();
            match repo.idem_sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(keys = n, "idempotency keys past their day forgotten"),
                Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
            }
        }
        match repo
            .reap_stuck(queued_timeout.as_millis() as i64, 500, crate::NAME)
            .await
        {
            Ok(c) if c.is_empty() => {}
            Ok(campaigns) => {
                tracing::warn!(
                    campaigns = campaigns.len(),
                    "attempts stuck without a media processor resolved as failed"
                );
                relay.notify();
                wake.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "reaper failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
