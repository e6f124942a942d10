//! The call-event consumer: `call.dialing` and `call.completed` move
//! attempts (and settle their leads).

use std::sync::Arc;

use dialstack_common::bus::{Delivery, HandleError, Handler};
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

/// Bindings of the scheduler's consumer.
pub const BINDINGS: &[&str] = &[types::CALL_DIALING, types::CALL_COMPLETED];
