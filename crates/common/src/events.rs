//! The CloudEvents 1.0 envelope (structured JSON, DESIGN §2). The payloads it
//! carries are typed in `dialstack-contract`.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique id (UUIDv7); the inbox deduplicates on it.
    pub id: String,
    /// The producing service.
    pub source: String,
    /// The event or command type (`dialstack_contract::types`).
    #[serde(rename = "type")]
    pub ty: String,
    /// RFC 3339 time of the event.
    pub time: String,
    /// The call or agent id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The typed payload.
    pub data: serde_json::Value,
}

/// A payload that cannot be read as the envelope or the expected data.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON or missing fields.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The envelope is fine but `data` is not the expected type.
    #[error("malformed {ty} data: {reason}")]
    Data {
        /// The event type.
        ty: String,
        /// What serde said.
        reason: String,
    },
}

impl CloudEvent {
    /// Builds an event with a fresh UUIDv7 id and the current time.
    pub fn new(source: &str, ty: &str, subject: impl Into<String>, data: &impl Serialize) -> Self {
        Self {
            specversion: "1.0".into(),
            id: uuid::Uuid::now_v7().to_string(),
            source: source.into(),
            ty: ty.into(),
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            subject: Some(subject.into()),
            datacontenttype: "application/json".into(),
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }

    /// Parses and validates an envelope.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let ev: Self =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if ev.specversion != "1.0" {
            return Err(EnvelopeError::Malformed(format!(
                "specversion {:?} is not 1.0",
                ev.specversion
            )));
        }
        if ev.id.is_empty() || ev.ty.is_empty() || ev.source.is_empty() {
            return Err(EnvelopeError::Malformed(
                "id, type and source are required".into(),
            ));
        }
        Ok(ev)
    }

    /// The JSON encoding.
    pub fn to_bytes(&self) -> bytes::Bytes {
        bytes::Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// `data` as `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, EnvelopeError> {
        serde_json::from_value(self.data.clone()).map_err(|e| EnvelopeError::Data {
            ty: self.ty.clone(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_rejects_garbage() {
        let data = serde_json::json!({"call_id": "c1", "sip_status": 486});
        let ev = CloudEvent::new("media-processor", "call.completed", "c1", &data);
        let back = CloudEvent::from_slice(&ev.to_bytes()).unwrap();
        assert_eq!(back, ev);
        assert_eq!(back.data_as::<serde_json::Value>().unwrap(), data);
        assert!(back.data_as::<u32>().is_err());
        assert!(CloudEvent::from_slice(b"{").is_err());
        let mut wrong = ev.clone();
        wrong.specversion = "0.3".into();
        assert!(CloudEvent::from_slice(&wrong.to_bytes()).is_err());
        assert!(ev.id.len() == 36);
    }
}
