//! The call-event consumer and the loop that keeps the active-calls gauge true.

use std::time::Duration;

use dialstack_common::bus::{Delivery, HandleError, Handler};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, CallEvent};
use tokio_util::sync::CancellationToken;

use crate::db::{Applied, Repo};
use crate::CallMetrics;

/// Bindings of monitor-service's queue.
pub const BINDINGS: &[&str] = &[
    types::CALL_DIALING,
    types::CALL_ANSWERED,
    types::CALL_COMPLETED,
];

/// Counts calls.
pub struct CallEvents {
    /// Outcomes and active calls.
    pub repo: Repo,
    /// Metrics.
    pub metrics: CallMetrics,
}

#[async_trait::async_trait]
impl Handler for CallEvents {
    async fn handle(&self, d: &Delivery) -> Result<(), HandleError> {
        let ev = CloudEvent::from_slice(&d.payload)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        let Some(call) = CallEvent::parse(&ev.ty, &ev.data)
            .map_err(|e| HandleError::Permanent(format!("{}: {e}", ev.ty)))?
        else {
            return Ok(());
        };
        let applied = self
            .repo
            .apply(&ev.id, &call)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        match applied {
            Applied::Nothing => {}
            Applied::Started => self.metrics.active.inc(),
            Applied::Completed(outcome) => {
                let campaign = call.call().campaign_id.as_str();
                self.metrics
                    .calls
                    .with_label_values(&[campaign, &outcome])
                    .inc();
                if let CallEvent::Completed(c) = &call {
                    if crate::domain::is_failure(c.outcome, c.sip_status) {
                        self.metrics.failures.with_label_values(&[campaign]).inc();
                    }
                }
                if self.metrics.active.get() > 0 {
                    self.metrics.active.dec();
                }
            }
        }
        Ok(())
    }
}

/// Re-reads the active-calls count from the database every few seconds (the
/// gauge survives restarts and events that raced) and forgets calls that have
/// been active for more than two hours.
pub async fn run_gauge(repo: Repo, metrics: CallMetrics, shutdown: CancellationToken) {
    loop {
        if let Err(e) = repo.reap_active(2 * 3_600_000).await {
            tracing::warn!(error = %e, "cannot reap stale active calls");
        }
        match repo.active().await {
            Ok(n) => metrics.active.set(n),
            Err(e) => tracing::warn!(error = %e, "cannot count active calls"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
