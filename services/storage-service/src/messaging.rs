//! The call-event consumer: `call.dialing` .. `call.completed` build the
//! CDR (with quality), `call.recording.ready` stores the recording's
//! metadata. Each is applied once (inbox) and acknowledged after its commit;
//! an event that breaks the contract, or a recording whose URL is not in
//! this service's recording store, is dead-lettered at once.
//!
//! Events come in batches ([`BatchHandler`]): the batch's valid events are
//! applied in one transaction (one inbox statement, one commit); a malformed
//! one is dead-lettered alone. If the batch's transaction fails, each event
//! is applied on its own, so one that cannot be written is retried alone.

use dialstack_common::bus::{BatchHandler, Delivery, HandleError, Handler};
use dialstack_common::events::CloudEvent;
use dialstack_common::recordings::RecordingStore;
use dialstack_contract::{types, CallEvent, RecordingReady};

use crate::db::{stage, Applied, Change, Repo};

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

/// A delivery, read.
enum Parsed {
    /// Nothing to apply (a type the CDR does not follow).
    Skip,
    /// A call event that moves the CDR.
    Call(String, CallEvent),
    /// A valid recording.
    Recording(String, RecordingReady),
}

#[async_trait::async_trait]
impl BatchHandler for CallEvents {
    async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Result<(), HandleError>> {
        let parsed: Vec<Result<Parsed, HandleError>> =
            batch.iter().map(|d| self.parse(d)).collect();
        let mut items = Vec::new();
        let mut at = Vec::new();
        for (i, p) in parsed.iter().enumerate() {
            let change = match p {
                Ok(Parsed::Call(id, ev)) => Applied {
                    event_id: id,
                    change: Change::Call(ev),
                },
                Ok(Parsed::Recording(id, r)) => Applied {
                    event_id: id,
                    change: Change::Recording(r),
                },
                _ => continue,
            };
            items.push(change);
            at.push(i);
        }
        let mut failed: Vec<Option<HandleError>> = Vec::new();
        if !items.is_empty() {
            if let Err(e) = self.repo.apply_batch(&items).await {
                tracing::debug!(error = %e, events = items.len(), "batch not applied, applying one at a time");
                for item in &items {
                    let one = match item.change {
                        Change::Call(ev) => self.repo.apply(item.event_id, ev).await,
                        Change::Recording(r) => self.repo.apply_recording(item.event_id, r).await,
                    };
                    failed.push(one.err().map(|e| HandleError::Transient(e.to_string())));
                }
            }
        }
        let mut failed = failed.into_iter();
        let mut at = at.into_iter().peekable();
        parsed
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let p = p?;
                if at.peek() == Some(&i) {
                    at.next();
                    if let Some(Some(e)) = failed.next() {
                        return Err(e);
                    }
                }
                drop(p);
                Ok(())
            })
            .collect()
    }
}

impl CallEvents {
    /// Reads and checks one delivery; an error is permanent.
    fn parse(&self, d: &Delivery) -> Result<Parsed, HandleError> {
        let ev = CloudEvent::from_slice(&d.payload)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        if ev.ty == types::RECORDING_READY {
            let r = self.recording(&ev)?;
            return Ok(Parsed::Recording(ev.id, r));
        }
        let call = CallEvent::parse(&ev.ty, &ev.data)
            .map_err(|e| HandleError::Permanent(format!("{}: {e}", ev.ty)))?;
        Ok(match call {
            Some(call) if stage(call.ty()).is_some() => Parsed::Call(ev.id, call),
            _ => Parsed::Skip,
        })
    }

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
