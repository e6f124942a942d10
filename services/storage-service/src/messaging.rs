//! The event consumer: `call.dialing` .. `call.completed` build the
//! CDR (with quality, IVR result and machine detection), `call.recording.ready`
//! stores the recording's metadata, `call.transcript` the call's transcript,
//! `customer.upserted` merges into the customer profiles and
//! `campaign.updated` sets a campaign's CDR retention. Each is applied once (inbox) and acknowledged after its commit;
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
use dialstack_contract::{
    types, CallEvent, CallTranscript, CampaignUpdated, CustomerUpserted, RecordingReady,
};

use crate::db::customers::{FieldValue, Upserted};
use crate::db::retention::CampaignRetention;
use crate::db::{stage, Applied, Change, Repo};

/// Bindings of storage-service's queue: every `call.*` event (including
/// `call.recording.ready` and `call.transcript`), `customer.upserted` and
/// `campaign.updated`.
pub const BINDINGS: &[&str] = &["call.#", types::CUSTOMER_UPSERTED, types::CAMPAIGN_UPDATED];

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
        let parsed = self.parse(d)?;
        let Some(item) = parsed.item() else {
            return Ok(());
        };
        self.repo
            .apply_batch(std::slice::from_ref(&item))
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
    /// A valid customer profile update, with its time.
    Customer(String, CustomerUpserted, i64),
    /// A campaign's retention.
    Retention(String, CampaignRetention),
    /// An agent's disposition of a call.
    Disposition(String, dialstack_contract::CallDisposition),
    /// A call's transcript.
    Transcript(String, CallTranscript),
}

impl Parsed {
    /// What applying it writes, if anything.
    fn item(&self) -> Option<Applied<'_>> {
        let (event_id, change) = match self {
            Parsed::Skip => return None,
            Parsed::Call(id, ev) => (id, Change::Call(ev)),
            Parsed::Recording(id, r) => (id, Change::Recording(r)),
            Parsed::Customer(id, c, at_ms) => (
                id,
                Change::Customer(Upserted {
                    scope: c.team.as_deref().unwrap_or(""),
                    phone: &c.phone,
                    external_id: c.external_id.as_deref(),
                    name: full_name(c),
                    fields: c
                        .fields
                        .iter()
                        .map(|(k, v)| (k.clone(), FieldValue::String(v.clone())))
                        .collect(),
                    at_ms: *at_ms,
                }),
            ),
            Parsed::Retention(id, r) => (id, Change::Retention(r)),
            Parsed::Disposition(id, d) => (id, Change::Disposition(d)),
            Parsed::Transcript(id, t) => (id, Change::Transcript(t)),
        };
        Some(Applied { event_id, change })
    }
}

/// "First Last" from what the import gave, if it gave either.
fn full_name(c: &CustomerUpserted) -> Option<String> {
    let parts: Vec<&str> = [c.first_name.as_deref(), c.last_name.as_deref()]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

#[async_trait::async_trait]
impl BatchHandler for CallEvents {
    async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Result<(), HandleError>> {
        let parsed: Vec<Result<Parsed, HandleError>> =
            batch.iter().map(|d| self.parse(d)).collect();
        let mut items = Vec::new();
        let mut at = Vec::new();
        for (i, p) in parsed.iter().enumerate() {
            if let Some(item) = p.as_ref().ok().and_then(Parsed::item) {
                items.push(item);
                at.push(i);
            }
        }
        let mut failed: Vec<Option<HandleError>> = Vec::new();
        if !items.is_empty() {
            if let Err(e) = self.repo.apply_batch(&items).await {
                tracing::debug!(error = %e, events = items.len(), "batch not applied, applying one at a time");
                for item in &items {
                    let one = self.repo.apply_batch(std::slice::from_ref(item)).await;
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
        let bad = |e: &dyn std::fmt::Display| HandleError::Permanent(format!("{}: {e}", ev.ty));
        match ev.ty.as_str() {
            types::RECORDING_READY => {
                let r = self.recording(&ev)?;
                return Ok(Parsed::Recording(ev.id, r));
            }
            types::CUSTOMER_UPSERTED => {
                let c: CustomerUpserted = ev.data_as().map_err(|e| bad(&e))?;
                c.validate().map_err(|e| bad(&e))?;
                let at_ms = chrono::DateTime::parse_from_rfc3339(&ev.time)
                    .map_err(|e| bad(&format!("time: {e}")))?
                    .timestamp_millis();
                return Ok(Parsed::Customer(ev.id, c, at_ms));
            }
            types::CAMPAIGN_UPDATED => {
                let c: CampaignUpdated = ev.data_as().map_err(|e| bad(&e))?;
                c.validate().map_err(|e| bad(&e))?;
                return Ok(Parsed::Retention(
                    ev.id,
                    CampaignRetention {
                        campaign_id: c.campaign_id,
                        cdr_retention_days: c.cdr_retention_days,
                        version: c.version,
                    },
                ));
            }
            types::CALL_TRANSCRIPT => {
                let t: CallTranscript = ev.data_as().map_err(|e| bad(&e))?;
                t.validate().map_err(|e| {
                    tracing::warn!(event_id = %ev.id, field = e.field, reason = %e.reason, "malformed call.transcript dropped");
                    bad(&e)
                })?;
                return Ok(Parsed::Transcript(ev.id, t));
            }
            types::CALL_DISPOSITION => {
                let d: dialstack_contract::CallDisposition = ev.data_as().map_err(|e| bad(&e))?;
                d.validate().map_err(|e| bad(&e))?;
                return Ok(Parsed::Disposition(ev.id, d));
            }
            _ => {}
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
