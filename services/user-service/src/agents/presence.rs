//! The presence loop: silent agents go offline, overdue wrap-ups end, unused
//! reservations lapse, and `dialstack_agents{state}` follows.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::{Repo, StateChange};
use crate::domain::AgentState;

/// Takes agents without a heartbeat for `heartbeat_timeout` offline, ends
/// wrap-ups past their team's timeout, gives back reservations not connected
/// within their hold (`reservation_hold`, recorded on each reservation), and
/// keeps the `dialstack_agents{state}` gauge, until shutdown.
pub async fn run_presence(
    repo: Repo,
    relay: dialstack_common::db::OutboxRelay,
    gauge: prometheus::IntGaugeVec,
    heartbeat_timeout: Duration,
    reservation_hold: Duration,
    shutdown: CancellationToken,
) {
    // At most a second between passes, so states stay true to the second;
    // four passes per hold, so a reservation lapses close to its time.
    let period = (heartbeat_timeout / 3)
        .min(reservation_hold / 4)
        .clamp(Duration::from_millis(200), Duration::from_secs(1));
    loop {
        lapse_reservations(&repo, &relay).await;
        end_overdue_wrap_ups(&repo, &relay).await;
        let cutoff = dialstack_common::now_ms() - heartbeat_timeout.as_millis() as i64;
        match repo.silent_agents(cutoff).await {
            Ok(ids) => {
                for id in ids {
                    match repo.time_out(&id, "heartbeat_timeout").await {
                        Ok(StateChange::Changed(_)) => {
                            tracing::info!(agent_id = %id, "agent went silent, now offline");
                            relay.notify();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot take a silent agent offline"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence check failed"),
        }
        if let Ok(counts) = repo.agent_counts().await {
            for s in AgentState::ALL {
                let n = counts
                    .iter()
                    .find(|(k, _)| k == s.as_str())
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                gauge.with_label_values(&[s.as_str()]).set(n);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// Gives back the reservations whose hold has passed (`reserved →
/// available`, reason `reservation_lapsed`); one connected meanwhile stays
/// connected.
async fn lapse_reservations(repo: &Repo, relay: &dialstack_common::db::OutboxRelay) {
    match repo.lapse_reservations(dialstack_common::now_ms()).await {
        Ok(lapsed) => {
            for row in &lapsed {
                tracing::info!(
                    agent_id = %row.agent.id,
                    call_id = row.call.call_id.as_deref().unwrap_or(""),
                    "reservation lapsed, agent available"
                );
            }
            if !lapsed.is_empty() {
                relay.notify();
            }
        }
        Err(e) => tracing::warn!(error = %e, "reservation lapse check failed"),
    }
}

/// Ends the wrap-up of agents whose team's wrap-up timeout has passed.
async fn end_overdue_wrap_ups(repo: &Repo, relay: &dialstack_common::db::OutboxRelay) {
    let (teams, agents) = match (repo.teams().await, repo.agents_in_wrap_up().await) {
        (Ok(t), Ok(a)) => (t, a),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "wrap-up check failed");
            return;
        }
    };
    let limits: std::collections::HashMap<String, i64> = teams
        .into_iter()
        .filter_map(|t| Some((t.name, t.wrap_up_timeout_secs?)))
        .collect();
    let now = dialstack_common::now_ms();
    for row in agents {
        let a = &row.agent;
        if !crate::domain::wrap_up_due(&a.teams, &limits, a.state_since, now) {
            continue;
        }
        // Only if still in this very wrap-up: an agent who paused or moved
        // on meanwhile is left alone.
        match repo
            .transition(&row, AgentState::Available, None, "wrap_up_timeout")
            .await
        {
            Ok(StateChange::Changed(_)) => {
                tracing::info!(agent_id = %a.id, "wrap-up timed out, agent available");
                relay.notify();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(agent_id = %a.id, error = %e, "cannot end a wrap-up"),
        }
    }
}
