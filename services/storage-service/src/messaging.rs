//! The call-event consumer.

use dialstack_common::bus::{Delivery, HandleError, Handler};
use dialstack_common::events::CloudEvent;
use dialstack_contract::CallEvent;

use crate::db::Repo;

/// Bindings of storage-service's queue.
pub const BINDINGS: &[&str] = &["call.#"];

/// Upserts CDRs from call events.
pub struct CallEvents {
    /// CDRs.
    pub repo: Repo,
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
        self.repo
            .apply(&ev.id, &call)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        Ok(())
    }
}
