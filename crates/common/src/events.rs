//! The CloudEvents 1.0 envelope (structured JSON) and the typed payloads of the
//! commands and events that cross service boundaries (DESIGN §2).

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Event and command types; the RabbitMQ routing key is the type.
pub mod types {
    /// Command: place a call.
    pub const DIAL: &str = "dial";
    /// Command: end a call.
    pub const HANGUP: &str = "hangup";
    /// The INVITE was sent.
    pub const CALL_DIALING: &str = "call.dialing";
    /// 180/183 received.
    pub const CALL_RINGING: &str = "call.ringing";
    /// 200 OK received and acknowledged.
    pub const CALL_ANSWERED: &str = "call.answered";
    /// The call ended, with its outcome.
    pub const CALL_COMPLETED: &str = "call.completed";
    /// A campaign changed state.
    pub const CAMPAIGN_STATE: &str = "campaign.state";
}

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique id (UUIDv7); the inbox deduplicates on it.
    pub id: String,
    /// The producing service.
    pub source: String,
    /// One of [`types`].
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

/// `dial`: place one call for one attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DialCommand {
    /// The attempt this call is for; claimed before the INVITE.
    pub attempt_id: String,
    /// The call id used in every event of this call (and as the SIP Call-ID prefix).
    pub call_id: String,
    /// The campaign.
    pub campaign_id: String,
    /// Destination, E.164.
    pub phone: String,
    /// Caller id to present, E.164.
    pub caller_id: String,
    /// How long to stay connected once answered (ms).
    pub talk_time_ms: u64,
    /// How long to let it ring before giving up (ms); at least 15 s by law.
    pub ring_timeout_ms: u64,
    /// The team the campaign belongs to, carried into the call's events so
    /// that its supervisors can read the call records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// How a call ended (DESIGN §3).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered by a person.
    AnsweredHuman,
    /// Answered by a machine.
    AnsweredMachine,
    /// 486/600.
    Busy,
    /// Rang out.
    NoAnswer,
    /// Refused by the callee or network (4xx/6xx other than busy).
    Rejected,
    /// Could not be placed or was lost (`reason` says why).
    Failed,
    /// Answered by a person, no agent within 2 s.
    Abandoned,
    /// Canceled by us before answer.
    Canceled,
}

impl Outcome {
    /// Every outcome, in a stable order.
    pub const ALL: [Outcome; 8] = [
        Self::AnsweredHuman,
        Self::AnsweredMachine,
        Self::Busy,
        Self::NoAnswer,
        Self::Rejected,
        Self::Failed,
        Self::Abandoned,
        Self::Canceled,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AnsweredHuman => "answered_human",
            Self::AnsweredMachine => "answered_machine",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Abandoned => "abandoned",
            Self::Canceled => "canceled",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// The data of every `call.*` event. Fields a given event does not know are
/// absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CallEventData {
    /// The call.
    pub call_id: String,
    /// The attempt.
    pub attempt_id: String,
    /// The campaign.
    pub campaign_id: String,
    /// Destination, E.164.
    pub phone: String,
    /// When this event happened (ms since epoch).
    pub at_ms: i64,
    /// Outcome (`call.completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why it failed (`call.completed` with `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Final SIP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip_status: Option<u16>,
    /// From INVITE to answer or final response (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_ms: Option<i64>,
    /// From answer to hang-up (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talk_ms: Option<i64>,
    /// RTP packets sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp_sent: Option<u64>,
    /// RTP packets received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp_received: Option<u64>,
    /// The campaign's team (from the dial command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The agent the call was bridged to (`call.bridged` onwards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// `campaign.state`: a campaign started, paused or finished.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CampaignStateData {
    /// The campaign.
    pub campaign_id: String,
    /// New state.
    pub state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_rejects_garbage() {
        let data = CallEventData {
            call_id: "c1".into(),
            outcome: Some(Outcome::Busy),
            sip_status: Some(486),
            ..Default::default()
        };
        let ev = CloudEvent::new("media-processor", types::CALL_COMPLETED, "c1", &data);
        let back = CloudEvent::from_slice(&ev.to_bytes()).unwrap();
        assert_eq!(back, ev);
        assert_eq!(back.data_as::<CallEventData>().unwrap(), data);
        assert!(back.data_as::<DialCommand>().is_err());
        assert!(CloudEvent::from_slice(b"{").is_err());
        let mut wrong = ev.clone();
        wrong.specversion = "0.3".into();
        assert!(CloudEvent::from_slice(&wrong.to_bytes()).is_err());
        assert!(ev.id.len() == 36);
    }

    #[test]
    fn outcomes_parse_their_names() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        assert_eq!(Outcome::parse("nope"), None);
    }
}
