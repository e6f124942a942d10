//! The call-event consumer.

use dialstack_common::bus::{Delivery, HandleError, Handler};
use dialstack_common::events::{CallEventData, CloudEvent};

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
        let data: CallEventData = ev
            .data_as()
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        if data.call_id.is_empty()
            || data.call_id.len() > 36
            || data.campaign_id.len() > 36
            || data.attempt_id.len() > 36
        {
            return Err(HandleError::Permanent(
                "call_id, attempt_id or campaign_id missing or too long".into(),
            ));
        }
        self.repo
            .apply(&ev.id, &ev.ty, &data)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        Ok(())
    }
}
