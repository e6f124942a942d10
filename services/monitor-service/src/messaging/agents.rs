//! `agent.state` events: each agent's latest state by event time, and the
//! loop that keeps `dialstack_agents{state,team}` equal to the database
//! (every replica reads the same rows, a restart keeps them).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use dialstack_common::bus::HandleError;
use dialstack_common::events::CloudEvent;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::agents::AgentApplied;
use crate::db::Repo;
use crate::domain::agents::{fold_teams, parse_agent_state, AgentState, MAX_TEAM_LABELS};

/// Applies one `agent.state`; a malformed one is logged naming the field and
/// dead-lettered.
pub async fn on_agent_state(
    repo: &Repo,
    ev: &CloudEvent,
    changed: &Notify,
) -> Result<(), HandleError> {
    let update = parse_agent_state(&ev.data).map_err(|e| {
        tracing::warn!(event_id = %ev.id, field = e.field, reason = %e.reason, "malformed agent.state dropped");
        HandleError::Permanent(format!("{}: {e}", ev.ty))
    })?;
    let applied = repo
        .apply_agent_state(&ev.id, &update)
        .await
        .map_err(|e| HandleError::Transient(e.to_string()))?;
    match applied {
        AgentApplied::Applied => changed.notify_one(),
        AgentApplied::Stale => tracing::debug!(
            agent_id = %update.agent_id,
            at_ms = update.at_ms,
            "agent.state older than the state held, ignored"
        ),
        AgentApplied::Duplicate => {}
    }
    Ok(())
}

/// Shortest time between two refreshes of the gauge (a burst of events
/// costs one query).
const MIN_REFRESH: Duration = Duration::from_millis(250);
/// Longest: another replica's changes show within this.
const MAX_REFRESH: Duration = Duration::from_secs(5);

/// Keeps `dialstack_agents{state,team}` until shutdown: refreshed after a
/// change here and every few seconds; teams beyond [`MAX_TEAM_LABELS`] are
/// summed into `other`, and teams that emptied lose their series.
pub async fn run_gauge(
    repo: Repo,
    gauge: prometheus::IntGaugeVec,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut shown: HashSet<String> = HashSet::new();
    loop {
        match repo.agents_by_team(None).await {
            Ok(rows) => {
                let folded = fold_teams(&rows, MAX_TEAM_LABELS);
                let now: HashSet<String> = folded.iter().map(|(t, _)| t.clone()).collect();
                for (team, counts) in &folded {
                    for s in AgentState::ALL {
                        gauge
                            .with_label_values(&[s.as_str(), team])
                            .set(counts.get(s));
                    }
                }
                for gone in shown.difference(&now) {
                    for s in AgentState::ALL {
                        let _ = gauge.remove_label_values(&[s.as_str(), gone]);
                    }
                }
                shown = now;
            }
            Err(e) => tracing::warn!(error = %e, "cannot count agents by state"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(MAX_REFRESH) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(MIN_REFRESH) => {}
        }
    }
}
