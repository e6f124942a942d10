//! The event consumer: `call.dialing`, `call.answered`, `call.bridged` and
//! `call.completed` move attempts (and settle their leads, and count in the
//! abandon ledger); `agent.state` keeps agent presence.

use std::sync::Arc;

use dialstack_common::bus::{BatchHandler, Delivery, HandleError, Handler};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, AgentStateChanged, CallEvent};
use tokio::sync::Notify;

use super::dispatcher::{Observations, Observed};
use crate::db::Repo;
use crate::domain::dialing::parse_agent_state;

/// Applies call events to attempts and agent states to presence.
pub struct CallEvents {
    /// The repository.
    pub repo: Repo,
    /// Woken when a call completes or is bridged, or an agent's state
    /// changes (each may free capacity).
    pub dispatcher_wake: Arc<Notify>,
    /// Completed calls, for the dispatcher's pacers.
    pub observations: Observations,
}

/// One message, read.
enum Incoming {
    Call(CallEvent),
    Agent(AgentStateChanged),
    /// A type this consumer does not act on.
    Other,
}

/// Reads a delivery; `Permanent` names what is wrong (the bus dead-letters
/// it, and it is logged here with the field).
fn read(d: &Delivery) -> Result<(String, Incoming), HandleError> {
    let ev =
        CloudEvent::from_slice(&d.payload).map_err(|e| HandleError::Permanent(e.to_string()))?;
    if ev.ty == types::AGENT_STATE {
        return match parse_agent_state(&ev.data) {
            Ok((a, _)) => Ok((ev.id, Incoming::Agent(a))),
            Err(e) => {
                tracing::warn!(event_id = %ev.id, field = %e.field, reason = %e.reason, "malformed agent.state dropped");
                Err(HandleError::Permanent(format!(
                    "{}: {}: {}",
                    ev.ty, e.field, e.reason
                )))
            }
        };
    }
    match CallEvent::parse(&ev.ty, &ev.data) {
        Ok(Some(call)) => Ok((ev.id, Incoming::Call(call))),
        Ok(None) => Ok((ev.id, Incoming::Other)),
        Err(e) => Err(HandleError::Permanent(format!("{}: {e}", ev.ty))),
    }
}

impl CallEvents {
    /// Applies what was read, calls and agents each in one transaction
    /// (each with the inbox). `Err` when the database failed.
    async fn apply(
        &self,
        calls: &[(&str, &CallEvent)],
        agents: &[(&str, &AgentStateChanged)],
    ) -> (Result<(), String>, Result<(), String>) {
        let mut wake = false;
        let calls_done = if calls.is_empty() {
            Ok(())
        } else {
            match self.repo.apply_call_events(calls).await {
                Ok(done) => {
                    for ((_, ev), d) in calls.iter().zip(&done) {
                        if let (Some(_), CallEvent::Completed(c)) = (d, ev) {
                            self.observations
                                .push(Observed::Completed(Box::new(c.clone())));
                        }
                    }
                    wake |= done.iter().any(Option::is_some)
                        || calls
                            .iter()
                            .any(|(_, c)| matches!(c, CallEvent::Bridged(_)));
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        };
        let agents_done = if agents.is_empty() {
            Ok(())
        } else {
            match self.repo.apply_agent_states(agents).await {
                Ok(applied) => {
                    for ((_, ev), a) in agents.iter().zip(&applied) {
                        if let Some(wrap_ms) = a.wrap_ended_ms {
                            self.observations.push(Observed::WrapEnded {
                                teams: ev.teams.clone(),
                                at_ms: ev.at_ms,
                                wrap_ms,
                            });
                        }
                    }
                    wake |= applied.iter().any(|a| a.fresh);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        };
        if wake {
            self.dispatcher_wake.notify_one();
        }
        (calls_done, agents_done)
    }
}

#[async_trait::async_trait]
impl Handler for CallEvents {
    async fn handle(&self, d: &Delivery) -> Result<(), HandleError> {
        let (id, incoming) = read(d)?;
        let (calls, agents) = match &incoming {
            Incoming::Call(c) => (vec![(id.as_str(), c)], vec![]),
            Incoming::Agent(a) => (vec![], vec![(id.as_str(), a)]),
            Incoming::Other => return Ok(()),
        };
        let (c, a) = self.apply(&calls, &agents).await;
        c.and(a).map_err(HandleError::Transient)
    }
}

/// A delivery batch in two transactions at most ([`Repo::apply_call_events`]
/// and [`Repo::apply_agent_states`]): a malformed message is dead-lettered
/// alone; a database failure redelivers the messages of that transaction,
/// which the inbox makes harmless.
#[async_trait::async_trait]
impl BatchHandler for CallEvents {
    async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Result<(), HandleError>> {
        let mut results: Vec<Result<(), HandleError>> = Vec::with_capacity(batch.len());
        let mut read_ok: Vec<(usize, String, Incoming)> = Vec::new();
        for (i, d) in batch.iter().enumerate() {
            match read(d) {
                Ok((id, incoming)) => {
                    read_ok.push((i, id, incoming));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let mut calls: Vec<(&str, &CallEvent)> = Vec::new();
        let mut agents: Vec<(&str, &AgentStateChanged)> = Vec::new();
        for (_, id, incoming) in &read_ok {
            match incoming {
                Incoming::Call(c) => calls.push((id.as_str(), c)),
                Incoming::Agent(a) => agents.push((id.as_str(), a)),
                Incoming::Other => {}
            }
        }
        if calls.is_empty() && agents.is_empty() {
            return results;
        }
        let (c, a) = self.apply(&calls, &agents).await;
        for (i, _, incoming) in &read_ok {
            let failed = match incoming {
                Incoming::Call(_) => c.as_ref().err(),
                Incoming::Agent(_) => a.as_ref().err(),
                Incoming::Other => None,
            };
            if let Some(e) = failed {
                results[*i] = Err(HandleError::Transient(e.clone()));
            }
        }
        results
    }
}

/// Bindings of the scheduler's consumer.
pub const BINDINGS: &[&str] = &[
    types::CALL_DIALING,
    types::CALL_ANSWERED,
    types::CALL_BRIDGED,
    types::CALL_COMPLETED,
    types::AGENT_STATE,
];
