//! The call-event consumer: `call.dialing` and `call.completed` move
//! attempts (and settle their leads).

use std::sync::Arc;

use dialstack_common::bus::{BatchHandler, Delivery, HandleError, Handler};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, CallEvent};
use tokio::sync::Notify;

use crate::db::Repo;

/// Applies `call.dialing` and `call.completed` to attempts.
pub struct CallEvents {
    /// The repository.
    pub repo: Repo,
    /// Woken when an attempt completes (frees a slot).
    pub dispatcher_wake: Arc<Notify>,
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
        let completed = self
            .repo
            .apply_call_event(&ev.id, &call)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        if completed.is_some() {
            self.dispatcher_wake.notify_one();
        }
        Ok(())
    }
}

/// A delivery batch in one transaction ([`Repo::apply_call_events`]): a
/// malformed message is dead-lettered alone; a database failure redelivers
/// the batch, which the inbox makes harmless.
#[async_trait::async_trait]
impl BatchHandler for CallEvents {
    async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Result<(), HandleError>> {
        let mut results: Vec<Result<(), HandleError>> = Vec::with_capacity(batch.len());
        let mut parsed: Vec<(usize, String, CallEvent)> = Vec::new();
        for (i, d) in batch.iter().enumerate() {
            let ev = match CloudEvent::from_slice(&d.payload) {
                Ok(ev) => ev,
                Err(e) => {
                    results.push(Err(HandleError::Permanent(e.to_string())));
                    continue;
                }
            };
            match CallEvent::parse(&ev.ty, &ev.data) {
                Ok(Some(call)) => {
                    parsed.push((i, ev.id, call));
                    results.push(Ok(()));
                }
                Ok(None) => results.push(Ok(())),
                Err(e) => results.push(Err(HandleError::Permanent(format!("{}: {e}", ev.ty)))),
            }
        }
        if parsed.is_empty() {
            return results;
        }
        let items: Vec<(&str, &CallEvent)> =
            parsed.iter().map(|(_, id, ev)| (id.as_str(), ev)).collect();
        match self.repo.apply_call_events(&items).await {
            Ok(done) => {
                if done.iter().any(Option::is_some) {
                    self.dispatcher_wake.notify_one();
                }
            }
            Err(e) => {
                for (i, _, _) in &parsed {
                    results[*i] = Err(HandleError::Transient(e.to_string()));
                }
            }
        }
        results
    }
}

/// Bindings of the scheduler's consumer.
pub const BINDINGS: &[&str] = &[types::CALL_DIALING, types::CALL_COMPLETED];
