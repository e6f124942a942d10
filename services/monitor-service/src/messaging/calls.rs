//! Call events: completed calls by outcome, calls in progress, and the loop
//! that keeps the active-calls gauge true.

use std::time::Duration;

use dialstack_common::bus::HandleError;
use dialstack_common::events::CloudEvent;
use dialstack_contract::CallEvent;
use tokio_util::sync::CancellationToken;

use crate::db::{Applied, Repo};
use crate::CallMetrics;

/// Counts one call event.
pub async fn on_call_event(
    repo: &Repo,
    metrics: &CallMetrics,
    ev: &CloudEvent,
) -> Result<(), HandleError> {
    let Some(call) = CallEvent::parse(&ev.ty, &ev.data)
        .map_err(|e| HandleError::Permanent(format!("{}: {e}", ev.ty)))?
    else {
        return Ok(());
    };
    let applied = repo
        .apply(&ev.id, &call)
        .await
        .map_err(|e| HandleError::Transient(e.to_string()))?;
    match applied {
        Applied::Nothing => {}
        Applied::Started => metrics.active.inc(),
        Applied::Completed(outcome) => {
            let campaign = metrics.campaigns.label(&call.call().campaign_id);
            let campaign = campaign.as_str();
            metrics.calls.with_label_values(&[campaign, &outcome]).inc();
            if let CallEvent::Completed(c) = &call {
                if crate::domain::is_failure(c.outcome, c.sip_status) {
                    metrics.failures.with_label_values(&[campaign]).inc();
                }
            }
            if metrics.active.get() > 0 {
                metrics.active.dec();
            }
        }
    }
    Ok(())
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
