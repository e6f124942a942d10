//! The event consumer: call events count calls ([`calls`]), `agent.state`
//! events keep agents by state ([`agents`]); each event is applied once
//! (inbox), and a payload that breaks the contract is logged with the field
//! at fault and dead-lettered.
//!
//! # Layout
//! - [`calls`]: call events, the active-calls gauge
//! - [`agents`]: `agent.state`, the `dialstack_agents{state,team}` gauge

pub mod agents;
pub mod calls;

use std::sync::Arc;

use dialstack_common::bus::{Delivery, HandleError, Handler};
use dialstack_common::events::CloudEvent;
use dialstack_contract::types;
use tokio::sync::Notify;

use crate::db::Repo;
use crate::CallMetrics;

/// Bindings of monitor-service's queue.
pub const BINDINGS: &[&str] = &[
    types::CALL_DIALING,
    types::CALL_ANSWERED,
    types::CALL_COMPLETED,
    types::AGENT_STATE,
];

/// Handles every event monitor-service is bound to.
pub struct Events {
    /// Outcomes, active calls, agents.
    pub repo: Repo,
    /// Call metrics.
    pub metrics: CallMetrics,
    /// Wakes the agents gauge after a change.
    pub agents_changed: Arc<Notify>,
}

#[async_trait::async_trait]
impl Handler for Events {
    async fn handle(&self, d: &Delivery) -> Result<(), HandleError> {
        let ev = CloudEvent::from_slice(&d.payload)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        if ev.ty == types::AGENT_STATE {
            agents::on_agent_state(&self.repo, &ev, &self.agents_changed).await
        } else {
            calls::on_call_event(&self.repo, &self.metrics, &ev).await
        }
    }
}
