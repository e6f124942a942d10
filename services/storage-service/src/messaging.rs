//! The call-event consumer: `call.dialing` .. `call.completed` build the
//! CDR (with quality), `call.recording.ready` stores the recording's
//! metadata. Each is applied once (inbox) and acknowledged after its commit;
//! an event that breaks the contract, or a recording whose URL is not in
//! this service's recording store, is dead-lettered at once.

use dialstack_common::bus::{Delivery, HandleError, Handler};
use dialstack_common::events::CloudEvent;
use dialstack_common::recordings::RecordingStore;
use dialstack_contract::{types, CallEvent, RecordingReady};

use crate::db::Repo;

/// Bindings of storage-service's queue: every `call.*` event, including
/// `call.recording.ready`.
pub const BINDINGS: &[&str] = &["call.#"];

/// Upserts CDRs and recordings from call events.
pub struct CallEvents {
    /// CDRs and recordings.
    pub repo: Repo,
    /// Where recordings are: a `call.recording.ready` must point inside it.
    pub store: RecordingStore,
}

#[async_trait::async_trait]
impl Handler for CallEvents {
    async fn handle(&self, d: &Delivery) -> Result<(), HandleError> {
        let ev = CloudEvent::from_slice(&d.payload)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        if ev.ty == types::RECORDING_READY {
            let r = self.recording(&ev)?;
            self.repo
                .apply_recording(&ev.id, &r)
                .await
                .map_err(|e| HandleError::Transient(e.to_string()))?;
            return Ok(());
        }
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

impl CallEvents {
    /// A `call.recording.ready` that keeps the contract and points into
    /// this service's store.
    fn recording(&self, ev: &CloudEvent) -> Result<RecordingReady, HandleError> {
        let bad = |e: &dyn std::fmt::Display| {
            HandleError::Permanent(format!("{}: {e}", types::RECORDING_READY))
        };
        let r: RecordingReady = ev.data_as().map_err(|e| bad(&e))?;
        r.call.validate().map_err(|e| bad(&e))?;
        r.validate().map_err(|e| bad(&e))?;
        if i64::try_from(r.bytes).is_err() || i64::try_from(r.duration_ms).is_err() {
            return Err(bad(&"bytes and duration_ms must fit in 63 bits"));
        }
        self.store
            .key_of(&r.url)
            .map_err(|e| bad(&format!("url: {e}")))?;
        // A key alone would pass key_of; the event must carry the full URL.
        if !self.store.owns(&r.url) {
            return Err(bad(&"url: not a URL of this recording store"));
        }
        Ok(r)
    }
}
