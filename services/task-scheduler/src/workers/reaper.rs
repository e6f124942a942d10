//! The reaper: attempts no media processor will finish, and idempotency
//! keys past their day.
//!
//! A lapsed lease means a lost call only if its media processor could have
//! renewed it. While the database is unreachable (or this service is down)
//! no renewal lands, so every live call's lease lapses during a long enough
//! outage, and reaping at once when the database comes back would fail
//! answered calls as `media_lost`. The reaper therefore waits a grace
//! ([`crate::Config::reaper_grace`]) after its start and after every failed
//! pass before it takes lapsed leases again: long enough for each media
//! processor to renew (every third of its lease).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_common::db::OutboxRelay;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::Repo;

/// When the reaper may act: not until `grace` has passed since it started
/// or since its last failed pass (the database was away, so renewals were
/// failing too).
#[derive(Debug, Clone)]
pub struct ReapGate {
    grace: Duration,
    quiet_until: Instant,
}

impl ReapGate {
    /// A gate closed for `grace` from `now` (the service just started).
    pub fn new(grace: Duration, now: Instant) -> Self {
        Self {
            grace,
            quiet_until: now + grace,
        }
    }

    /// Whether lapsed leases may be taken for lost calls at `now`.
    pub fn open(&self, now: Instant) -> bool {
        now >= self.quiet_until
    }

    /// A pass failed at `now` (the database is unreachable): closed again
    /// until `grace` after the failure.
    pub fn failed(&mut self, now: Instant) {
        self.quiet_until = self.quiet_until.max(now + self.grace);
    }
}

/// Every second until shutdown, resolves attempts that no media processor
/// will finish ([`Repo::reap_stuck`]), once the [`ReapGate`] is open.
pub async fn run_reaper(
    repo: Repo,
    relay: OutboxRelay,
    wake: Arc<Notify>,
    queued_timeout: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let mut last_sweep = Instant::now();
    let mut gate = ReapGate::new(grace, Instant::now());
    let mut waiting = false;
    loop {
        if last_sweep.elapsed() > Duration::from_secs(60) {
            last_sweep = Instant::now();
            match repo.idem_sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(keys = n, "idempotency keys past their day forgotten"),
                Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
            }
        }
        if gate.open(Instant::now()) {
            if waiting {
                waiting = false;
                tracing::info!("reaper resumed: lapsed leases are taken for lost calls again");
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
                Err(e) => {
                    tracing::warn!(error = %e, grace_secs = grace.as_secs(), "reaper failed: leases are left alone until the database has been back for the grace");
                    gate.failed(Instant::now());
                    waiting = true;
                }
            }
        } else if let Err(e) = sqlx::query("SELECT 1").execute(&repo.db.pool).await {
            // Still away: the grace restarts when it comes back.
            tracing::debug!(error = %e, "reaper waiting for the database");
            gate.failed(Instant::now());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_waits_the_grace_after_start_and_after_each_failure() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = ReapGate::new(s(20), t0);
        assert!(!g.open(t0), "closed at start: renewals may be on their way");
        assert!(!g.open(t0 + s(19)));
        assert!(g.open(t0 + s(20)));
        // The database goes away at 30 s and is still away at 45 s.
        g.failed(t0 + s(30));
        g.failed(t0 + s(45));
        assert!(!g.open(t0 + s(50)));
        assert!(
            !g.open(t0 + s(64)),
            "20 s after the last failure, not the first"
        );
        assert!(g.open(t0 + s(65)));
        // A failure never shortens a wait already running.
        let mut g = ReapGate::new(s(20), t0);
        g.failed(t0 - s(10));
        assert!(!g.open(t0 + s(19)));
        // No grace: always open.
        let g = ReapGate::new(Duration::ZERO, t0);
        assert!(g.open(t0));
    }
}
