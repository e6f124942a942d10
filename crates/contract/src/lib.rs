//! What crosses dialstack's service boundaries: the commands task-scheduler
//! sends media-processor, and the events every service publishes, each typed
//! per event type. The CloudEvents envelope that carries them is
//! infrastructure and lives in `dialstack-common`; this crate is the payload.
//!
//! Producers build one of these structs and serialize it; consumers parse the
//! envelope's `data` with [`CallEvent::parse`] (or the struct for their one
//! type) and never look at loose JSON.
//!
//! # Layout
//! - [`types`]: the event and command type names (RabbitMQ routing keys)
//! - [`DialCommand`], [`HangupCommand`]: the commands, validated at the edge
//! - [`Outcome`], [`FailReason`]: how a call ended and why it failed
//! - [`CallRef`] and [`CallDialing`], [`CallRinging`], [`CallAnswered`],
//!   [`CallCompleted`], gathered in [`CallEvent`]
//! - [`Quality`]: per-call voice quality (filled by the RTP path)
//! - [`AgentStateChanged`], [`CampaignStateChanged`]

use serde::{Deserialize, Serialize};

pub mod ivr;

pub use ivr::{AmdResult, AmdSpec, IvrFlow, IvrNode, IvrResult};

/// Event and command types; the RabbitMQ routing key is the type.
pub mod types {
    /// Command: place a call.
    pub const DIAL: &str = "dial";
    /// Command: end a call.
    pub const HANGUP: &str = "hangup";
    /// Command: hand an agent's call on to another destination (blind
    /// transfer asked for through the API rather than by the phone's REFER).
    pub const TRANSFER: &str = "transfer";
    /// The INVITE was sent.
    pub const CALL_DIALING: &str = "call.dialing";
    /// 180/183 received.
    pub const CALL_RINGING: &str = "call.ringing";
    /// 200 OK received and acknowledged.
    pub const CALL_ANSWERED: &str = "call.answered";
    /// The call ended, with its outcome.
    pub const CALL_COMPLETED: &str = "call.completed";
    /// A call's recording is stored.
    pub const RECORDING_READY: &str = "call.recording.ready";
    /// An agent's state changed.
    pub const AGENT_STATE: &str = "agent.state";
    /// A campaign changed state.
    pub const CAMPAIGN_STATE: &str = "campaign.state";
    /// A lead import carried a customer's profile fields (storage-service
    /// owns profiles).
    pub const CUSTOMER_UPSERTED: &str = "customer.upserted";
    /// A campaign was created or its settings changed (the settings other
    /// services keep a copy of, e.g. storage-service's CDR retention).
    pub const CAMPAIGN_UPDATED: &str = "campaign.updated";
    /// An answered call was connected to an agent.
    pub const CALL_BRIDGED: &str = "call.bridged";
    /// The agent on a call set its disposition (ends wrap-up).
    pub const CALL_DISPOSITION: &str = "call.disposition";
    /// A recorded call was transcribed (campaigns with `transcribe`).
    pub const CALL_TRANSCRIPT: &str = "call.transcript";
}

/// A payload that breaks the contract; `field` names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ContractError {
    /// The offending field (or `data` for the whole payload).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ContractError {
    ContractError {
        field,
        reason: reason.into(),
    }
}

/// Longest ring the edge accepts (ms); the scheduler enforces the legal floor.
pub const MAX_RING_TIMEOUT_MS: u64 = 300_000;
/// Shortest ring the edge accepts (ms).
pub const MIN_RING_TIMEOUT_MS: u64 = 100;
/// Longest talk time the edge accepts (ms).
pub const MAX_TALK_TIME_MS: u64 = 3_600_000;

/// Whether `s` is an E.164 number: `+`, then 2 to 15 digits, the first not 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// An identifier that is safe in a SIP header and a log line: 1-64 of
/// letters, digits and `-_.`.
fn check_id(field: &'static str, v: &str) -> Result<(), ContractError> {
    if v.is_empty() || v.len() > 64 {
        return Err(bad(field, "must be 1-64 characters"));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(bad(field, "only letters, digits and -_. are allowed"));
    }
    Ok(())
}

/// `dial`: place one call for one attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DialCommand {
    /// The attempt this call is for; claimed before the INVITE.
    pub attempt_id: String,
    /// The call id used in every event of this call and as the SIP Call-ID.
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
    /// Record the call (the campaign's `record` flag).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record: bool,
    /// Days the recording is kept (the campaign's
    /// `recording_retention_days`); `None` keeps it until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_retention_days: Option<u32>,
    /// Connect the answered callee to an agent (campaign modes `preview`,
    /// `progressive`, `predictive`); `None`: no agent (`ivr`, and the tone
    /// of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeSpec>,
    /// The campaign's IVR flow, run on the answered call (`None`: the tone,
    /// or the bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ivr: Option<Box<IvrFlow>>,
    /// Answering-machine detection (`None`: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amd: Option<AmdSpec>,
    /// Transcribe the recording after the call (the campaign's
    /// `transcribe`; needs `record`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transcribe: bool,
    /// The lead's fields for prompts (`{first_name}`), at most
    /// [`MAX_DIAL_FIELDS`].
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
}

/// Most lead fields a dial command carries.
pub const MAX_DIAL_FIELDS: usize = 50;

/// How an answered call reaches an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct BridgeSpec {
    /// Skills the agent must have, with the lowest level (1-10).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub skills: std::collections::BTreeMap<String, u8>,
    /// Preview: this agent asked for the lead and is called first, then the
    /// customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// How long an answered callee may wait for an agent before the
    /// compliance message and hang-up (ms; the law says 2,000).
    #[serde(default = "default_abandon_after_ms")]
    pub abandon_after_ms: u64,
    /// The campaign's compliance message (the seller's name and a number
    /// to call back, with an opt-out): a stored prompt or text rendered
    /// with the lead's fields. Empty: the deployment's message
    /// (`DIALSTACK_ABANDON_PROMPT`, or the built-in chime).
    #[serde(default, skip_serializing_if = "ivr::Say::is_empty")]
    pub abandon_message: ivr::Say,
}

fn default_abandon_after_ms() -> u64 {
    2_000
}

/// Most skills a bridge may ask for.
pub const MAX_BRIDGE_SKILLS: usize = 16;

impl BridgeSpec {
    /// Edge rules: skill names are ids with levels 1-10, at most
    /// [`MAX_BRIDGE_SKILLS`]; the agent id is an id; the wait is 100-10,000 ms.
    pub fn validate(&self) -> Result<(), ContractError> {
        if self.skills.len() > MAX_BRIDGE_SKILLS {
            return Err(bad("bridge.skills", format!("at most {MAX_BRIDGE_SKILLS}")));
        }
        for (k, v) in &self.skills {
            check_id("bridge.skills", k)?;
            if !(1..=10).contains(v) {
                return Err(bad("bridge.skills", "levels are 1-10"));
            }
        }
        if let Some(a) = &self.agent_id {
            check_id("bridge.agent_id", a)?;
        }
        if !(100..=10_000).contains(&self.abandon_after_ms) {
            return Err(bad("bridge.abandon_after_ms", "must be 100-10000"));
        }
        self.abandon_message
            .check("bridge.abandon_message", false)
            .map_err(|e| bad("bridge.abandon_message", e.reason))?;
        Ok(())
    }
}

impl DialCommand {
    /// The edge rules: ids are header-safe tokens, numbers are E.164, no
    /// value carries a line break or control character, timeouts are within
    /// [`MIN_RING_TIMEOUT_MS`]..=[`MAX_RING_TIMEOUT_MS`] and
    /// ..=[`MAX_TALK_TIME_MS`].
    pub fn validate(&self) -> Result<(), ContractError> {
        check_id("attempt_id", &self.attempt_id)?;
        check_id("call_id", &self.call_id)?;
        check_id("campaign_id", &self.campaign_id)?;
        if !is_e164(&self.phone) {
            return Err(bad("phone", "must be E.164 (+ and 2-15 digits)"));
        }
        if !is_e164(&self.caller_id) {
            return Err(bad("caller_id", "must be E.164 (+ and 2-15 digits)"));
        }
        if !(MIN_RING_TIMEOUT_MS..=MAX_RING_TIMEOUT_MS).contains(&self.ring_timeout_ms) {
            return Err(bad(
                "ring_timeout_ms",
                format!("must be {MIN_RING_TIMEOUT_MS}-{MAX_RING_TIMEOUT_MS}"),
            ));
        }
        if self.talk_time_ms > MAX_TALK_TIME_MS {
            return Err(bad(
                "talk_time_ms",
                format!("must be at most {MAX_TALK_TIME_MS}"),
            ));
        }
        if let Some(t) = &self.team {
            if t.is_empty() || t.len() > 64 || t.chars().any(char::is_control) {
                return Err(bad(
                    "team",
                    "must be 1-64 characters without control characters",
                ));
            }
        }
        if let Some(b) = &self.bridge {
            b.validate()?;
        }
        if let Some(f) = &self.ivr {
            f.validate()?;
        }
        if let Some(a) = &self.amd {
            a.validate()?;
        }
        if self.fields.len() > MAX_DIAL_FIELDS
            || self
                .fields
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 1_000)
        {
            return Err(bad(
                "fields",
                format!("at most {MAX_DIAL_FIELDS} fields, names 1-64 and values up to 1000 bytes"),
            ));
        }
        Ok(())
    }
}

/// `hangup`: end a call that is ringing (CANCEL) or answered (BYE).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HangupCommand {
    /// The call.
    pub call_id: String,
    /// Who asked (user id), for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl HangupCommand {
    /// The edge rules of [`DialCommand::validate`] for the call id.
    pub fn validate(&self) -> Result<(), ContractError> {
        check_id("call_id", &self.call_id)
    }
}

/// Longest transfer target the edge accepts.
pub const MAX_TRANSFER_TARGET: usize = 512;

/// `transfer`: the agent bridged to a call hands the callee on to
/// `target` (a blind transfer, as a REFER from the agent's phone would).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransferCommand {
    /// The call.
    pub call_id: String,
    /// Where to: a `sip:` or `sips:` URI.
    pub target: String,
    /// Who asked (user id), for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl TransferCommand {
    /// The call id's rules, and a target that is one `sip:`/`sips:` URI
    /// with a host, of at most [`MAX_TRANSFER_TARGET`] bytes, with nothing
    /// that could leave the URI in a SIP header (spaces, controls, `<>"`).
    pub fn validate(&self) -> Result<(), ContractError> {
        check_id("call_id", &self.call_id)?;
        check_transfer_target(&self.target)
    }
}

/// The target rules of [`TransferCommand::validate`].
pub fn check_transfer_target(target: &str) -> Result<(), ContractError> {
    if target.is_empty() || target.len() > MAX_TRANSFER_TARGET {
        return Err(bad(
            "target",
            format!("must be 1-{MAX_TRANSFER_TARGET} characters"),
        ));
    }
    if target
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>\"".contains(c))
    {
        return Err(bad(
            "target",
            "must not contain spaces, control characters or <>\"",
        ));
    }
    let lower = target.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("sip:")
        .or_else(|| lower.strip_prefix("sips:"))
    else {
        return Err(bad("target", "must be a sip: or sips: URI"));
    };
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split([';', '?']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(bad("target", "must name a host"));
    }
    Ok(())
}

/// Longest instance word in a routing key (the outbox keeps keys of up to
/// 128 bytes).
const MAX_INSTANCE_WORD: usize = 100;

/// The routing key of a command of type `ty` addressed to the one process
/// that holds the call: `ty.<instance>`, the instance being the claimer id
/// the process claims attempts with, reduced to letters, digits, `-` and
/// `_` (no `.`, `*` or `#`, which mean something in a topic pattern) and
/// to at most 100 bytes. task-scheduler addresses `hangup` and `transfer`
/// with it; each media-processor binds its own keys.
pub fn instance_route(ty: &str, claimer: &str) -> String {
    let word: String = claimer
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_INSTANCE_WORD)
        .collect();
    format!("{ty}.{word}")
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $v,)* }

        impl $name {
            /// Every value, in a stable order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

            /// The snake_case name (as stored and serialized).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }

            /// Parses the snake_case name.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|o| o.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// How a call ended (DESIGN §3).
    Outcome {
        /// Answered by a person.
        AnsweredHuman = "answered_human",
        /// Answered by a machine.
        AnsweredMachine = "answered_machine",
        /// 486/600.
        Busy = "busy",
        /// Rang out.
        NoAnswer = "no_answer",
        /// Refused by the callee or network (4xx/6xx other than busy).
        Rejected = "rejected",
        /// Could not be placed or was lost ([`FailReason`] says why).
        Failed = "failed",
        /// Answered by a person, no agent within 2 s.
        Abandoned = "abandoned",
        /// Canceled by us before answer (hang-up command, shutdown).
        Canceled = "canceled",
        /// Answered; machine detection could not tell a person from a
        /// machine in time (the call went on as a person's).
        AmdUnsure = "amd_unsure",
    }
}

/// SIP 603 Decline: the callee (or the callee's phone) said no. Media
/// processor reports it as `rejected`, but it is the callee's answer, not a
/// fault of the system or the network.
pub const SIP_DECLINE: u16 = 603;

/// Whether a completed call is a *failure*: the system's or the network's
/// fault. `failed` always is (timeouts, 5xx, media lost, trunk auth);
/// `rejected` is, unless the callee declined (603). Busy, no answer,
/// machine, abandoned and canceled calls are outcomes, not failures.
pub fn is_failure(outcome: Outcome, sip_status: Option<u16>) -> bool {
    match outcome {
        Outcome::Failed => true,
        Outcome::Rejected => sip_status != Some(SIP_DECLINE),
        Outcome::AnsweredHuman
        | Outcome::AnsweredMachine
        | Outcome::AmdUnsure
        | Outcome::Busy
        | Outcome::NoAnswer
        | Outcome::Abandoned
        | Outcome::Canceled => false,
    }
}

named_enum! {
    /// Why a call `failed` (or, for `no_answer`, how it rang out).
    FailReason {
        /// The trunk answered 5xx or another final status we cannot use.
        TrunkError = "trunk_error",
        /// The trunk refused our credentials (or challenged twice).
        TrunkAuth = "trunk_auth",
        /// No response to the INVITE within Timer B.
        Timeout = "timeout",
        /// The call was lost by media-processor (lease or heartbeat ran out).
        MediaLost = "media_lost",
        /// The dial command never reached a media processor.
        DialLost = "dial_lost",
        /// The peer's response could not be parsed.
        MalformedResponse = "malformed_response",
        /// A 3xx redirect (not followed: the destination guard would be bypassed).
        RedirectUnsupported = "redirect_unsupported",
        /// No RTP port was free.
        NoRtpPort = "no_rtp_port",
        /// Our CANCEL got no final response.
        CancelUnanswered = "cancel_unanswered",
        /// The SIP edge was not running.
        Internal = "internal",
    }
}

/// Per-call voice quality of the incoming stream, measured by the RTP path
/// after its jitter buffer (what the callee's audio sounded like to us).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Quality {
    /// RTP audio packets accepted (right source and SSRC).
    pub packets_received: u64,
    /// Packets that never arrived (sequence gaps).
    pub packets_lost: u64,
    /// Packets that arrived after their playout time (discarded).
    pub packets_late: u64,
    /// Packets received twice.
    pub packets_duplicated: u64,
    /// RFC 3550 interarrival jitter, mean over the call (ms).
    pub jitter_ms_mean: f64,
    /// RFC 3550 interarrival jitter, highest value seen (ms).
    pub jitter_ms_max: f64,
    /// Jitter-buffer playout delay, mean over the call (ms).
    pub jitter_buffer_ms: f64,
    /// Audio synthesized by loss concealment (ms).
    pub concealed_ms: u64,
    /// Round-trip time from RTCP LSR/DLSR (ms), when the peer sent reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// E-model (ITU-T G.107) transmission rating.
    pub r_factor: f64,
    /// MOS-CQE from the R-factor (1.0-4.5).
    pub mos: f64,
}

/// What every `call.*` event carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CallRef {
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
    /// The campaign's team (from the dial command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

impl CallRef {
    /// Consumer-side checks: ids present and at most 36 characters (UUIDs).
    pub fn validate(&self) -> Result<(), ContractError> {
        for (field, v) in [
            ("call_id", &self.call_id),
            ("attempt_id", &self.attempt_id),
            ("campaign_id", &self.campaign_id),
        ] {
            if v.is_empty() || v.len() > 36 {
                return Err(bad(field, "must be 1-36 characters"));
            }
        }
        if self.phone.len() > 32 {
            return Err(bad("phone", "must be at most 32 characters"));
        }
        Ok(())
    }
}

/// `call.dialing`: the INVITE was sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CallDialing {
    /// The call.
    #[serde(flatten)]
    pub call: CallRef,
}

/// `call.ringing`: 180 or 183 received.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CallRinging {
    /// The call.
    #[serde(flatten)]
    pub call: CallRef,
}

/// `call.answered`: 200 OK received and acknowledged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CallAnswered {
    /// The call.
    #[serde(flatten)]
    pub call: CallRef,
    /// From INVITE to answer (ms).
    pub ring_ms: i64,
}

/// `call.recording.ready`: a call's stereo WAV is in the recording store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordingReady {
    /// The call.
    #[serde(flatten)]
    pub call: CallRef,
    /// Where it is: `file:///...` or `s3://bucket/key`.
    pub url: String,
    /// Audio length (ms).
    pub duration_ms: u64,
    /// File size.
    pub bytes: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Delete it this many days after the call (`None`: keep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
}

impl RecordingReady {
    /// The contract rules: a known URL scheme, a 64-digit hex digest.
    pub fn validate(&self) -> Result<(), ContractError> {
        check_id("call_id", &self.call.call_id)?;
        if !(self.url.starts_with("file:///") || self.url.starts_with("s3://"))
            || self.url.len() > 1024
        {
            return Err(bad(
                "url",
                "must be file:///... or s3://... (at most 1024 bytes)",
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("sha256", "must be 64 hex digits"));
        }
        Ok(())
    }
}

/// `call.completed`: the call ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallCompleted {
    /// The call.
    #[serde(flatten)]
    pub call: CallRef,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed (with `failed`, and `no_answer` by CANCEL timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailReason>,
    /// Final SIP status of the INVITE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip_status: Option<u16>,
    /// From INVITE to answer or final response (ms).
    pub ring_ms: i64,
    /// From answer to hang-up (ms).
    pub talk_ms: i64,
    /// RTP packets sent.
    pub rtp_sent: u64,
    /// RTP packets accepted (right source and SSRC).
    pub rtp_received: u64,
    /// The agent the call was bridged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Voice quality (RTP path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// The agent leg, when the call was bridged (boxed: most calls have
    /// none, and the event stays small).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Box<AgentLeg>>,
    /// What the IVR flow did (path, gathered values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ivr: Option<Box<IvrResult>>,
    /// What answering-machine detection decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amd: Option<Box<AmdResult>>,
}

/// The agent leg of a bridged call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AgentLeg {
    /// The agent.
    pub agent_id: String,
    /// The callee's wait from answer until the agent was connected (ms).
    pub wait_ms: i64,
    /// From INVITE to the agent's answer (ms).
    pub ring_ms: i64,
    /// From the agent's answer until the bridge ended (ms).
    pub talk_ms: i64,
    /// Agents tried before this one answered (each did not answer in time).
    #[serde(default)]
    pub tries: u32,
    /// Voice quality of the agent's audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// The agent handed the callee on (a blind transfer by REFER): the
    /// agent's `talk_ms` ends there and the callee talked on with
    /// `transfer.target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferLeg>,
}

/// Where an agent transferred the callee, and how that leg went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TransferLeg {
    /// The SIP URI the agent referred the call to.
    pub target: String,
    /// From the target's INVITE to its answer (ms).
    pub ring_ms: i64,
    /// From the target's answer until the call ended (ms).
    pub talk_ms: i64,
    /// Voice quality of the target's audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
}

/// `call.transcript`: the words of a recorded call, by speech
/// recognition after the call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallTranscript {
    /// The call.
    #[serde(flatten)]
    pub call: CallRef,
    /// The callee's words (the recording's callee channel).
    pub text: String,
    /// The recognizer's confidence (0-1), when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// The engine and model, e.g. `pocketsphinx en-us`.
    pub engine: String,
    /// Seconds of audio transcribed.
    pub audio_seconds: f64,
}

/// Longest transcript text an event carries (bytes).
pub const MAX_TRANSCRIPT_BYTES: usize = 64 * 1024;

impl CallTranscript {
    /// Consumer-side checks: the call reference, a bounded text, a
    /// confidence in 0-1.
    pub fn validate(&self) -> Result<(), ContractError> {
        self.call.validate()?;
        if self.text.len() > MAX_TRANSCRIPT_BYTES {
            return Err(bad("text", format!("at most {MAX_TRANSCRIPT_BYTES} bytes")));
        }
        if self.confidence.is_some_and(|c| !(0.0..=1.0).contains(&c)) {
            return Err(bad("confidence", "must be 0-1"));
        }
        if self.engine.is_empty() || self.engine.len() > 100 {
            return Err(bad("engine", "must be 1-100 characters"));
        }
        if !(self.audio_seconds.is_finite() && self.audio_seconds >= 0.0) {
            return Err(bad("audio_seconds", "must be a non-negative number"));
        }
        Ok(())
    }
}

/// `call.bridged`: the answered callee is talking to an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallBridged {
    /// The call.
    #[serde(flatten)]
    pub call: CallRef,
    /// The agent.
    pub agent_id: String,
    /// The callee's wait from answer until the agent was connected (ms).
    pub wait_ms: i64,
    /// From INVITE to the agent's answer (ms).
    pub agent_ring_ms: i64,
}

/// `call.disposition`: the agent on a call set its disposition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallDisposition {
    /// The call.
    pub call_id: String,
    /// The attempt.
    pub attempt_id: String,
    /// The campaign.
    pub campaign_id: String,
    /// The agent who set it.
    pub agent_id: String,
    /// The code (one of the campaign's).
    pub code: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// With `CALLBACK`: when (ms since epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_at_ms: Option<i64>,
    /// When (ms since epoch).
    pub at_ms: i64,
}

impl CallDisposition {
    /// Consumer-side checks.
    pub fn validate(&self) -> Result<(), ContractError> {
        check_id("call_id", &self.call_id)?;
        check_id("attempt_id", &self.attempt_id)?;
        check_id("campaign_id", &self.campaign_id)?;
        check_id("agent_id", &self.agent_id)?;
        check_id("code", &self.code)?;
        if self.note.as_ref().is_some_and(|n| n.chars().count() > 1000) {
            return Err(bad("note", "at most 1,000 characters"));
        }
        Ok(())
    }
}

impl CallCompleted {
    /// A call that ended before it was answered, with nothing measured.
    pub fn unanswered(call: CallRef, outcome: Outcome, reason: Option<FailReason>) -> Self {
        Self {
            call,
            outcome,
            reason,
            sip_status: None,
            ring_ms: 0,
            talk_ms: 0,
            rtp_sent: 0,
            rtp_received: 0,
            agent_id: None,
            quality: None,
            agent: None,
            ivr: None,
            amd: None,
        }
    }
}

/// One `call.*` event, typed by its type name.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// `call.dialing`.
    Dialing(CallDialing),
    /// `call.ringing`.
    Ringing(CallRinging),
    /// `call.answered`.
    Answered(CallAnswered),
    /// `call.completed`.
    Completed(CallCompleted),
    /// `call.bridged`.
    Bridged(CallBridged),
}

impl CallEvent {
    /// Reads `data` of an event of type `ty`: `Ok(None)` for a type that is
    /// not a call event this crate knows (a consumer ignores it), an error
    /// naming the field for data that breaks the contract.
    pub fn parse(ty: &str, data: &serde_json::Value) -> Result<Option<Self>, ContractError> {
        fn read<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<T, ContractError> {
            T::deserialize(v).map_err(|e| bad("data", e.to_string()))
        }
        let ev = match ty {
            types::CALL_DIALING => Self::Dialing(read(data)?),
            types::CALL_RINGING => Self::Ringing(read(data)?),
            types::CALL_ANSWERED => Self::Answered(read(data)?),
            types::CALL_COMPLETED => Self::Completed(read(data)?),
            types::CALL_BRIDGED => Self::Bridged(read(data)?),
            _ => return Ok(None),
        };
        ev.call().validate()?;
        Ok(Some(ev))
    }

    /// The type name.
    pub fn ty(&self) -> &'static str {
        match self {
            Self::Dialing(_) => types::CALL_DIALING,
            Self::Ringing(_) => types::CALL_RINGING,
            Self::Answered(_) => types::CALL_ANSWERED,
            Self::Completed(_) => types::CALL_COMPLETED,
            Self::Bridged(_) => types::CALL_BRIDGED,
        }
    }

    /// What every call event carries.
    pub fn call(&self) -> &CallRef {
        match self {
            Self::Dialing(e) => &e.call,
            Self::Ringing(e) => &e.call,
            Self::Answered(e) => &e.call,
            Self::Completed(e) => &e.call,
            Self::Bridged(e) => &e.call,
        }
    }

    /// The payload as JSON.
    pub fn to_value(&self) -> serde_json::Value {
        let v = match self {
            Self::Dialing(e) => serde_json::to_value(e),
            Self::Ringing(e) => serde_json::to_value(e),
            Self::Answered(e) => serde_json::to_value(e),
            Self::Completed(e) => serde_json::to_value(e),
            Self::Bridged(e) => serde_json::to_value(e),
        };
        // Plain structs of strings and numbers always serialize.
        v.unwrap_or(serde_json::Value::Null)
    }
}

/// `agent.state`: an agent moved from one state to another.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentStateChanged {
    /// The agent (user id).
    pub agent_id: String,
    /// State before.
    pub previous: String,
    /// State now.
    pub state: String,
    /// Pause code, when paused.
    #[serde(default)]
    pub pause_code: Option<String>,
    /// Why (`login`, `heartbeat_lost`, `deleted`, `reserved`, ...).
    pub reason: String,
    /// When (ms since epoch).
    pub at_ms: i64,
    /// The agent's teams (consumers that pace dialing count free agents
    /// per team).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
    /// The call, for `reserved`, `on_call` and `wrap_up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
}

/// `campaign.state`: a campaign started, paused or finished.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CampaignStateChanged {
    /// The campaign.
    pub campaign_id: String,
    /// New state.
    pub state: String,
}

/// `customer.upserted`: profile fields of a customer, keyed by number, as a
/// lead import gave them. Fields not given are left as they are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CustomerUpserted {
    /// The number, E.164 (the profile's key).
    pub phone: String,
    /// The campaign whose import carried it.
    pub campaign_id: String,
    /// The campaign's team: the customer's scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The customer's id in the operator's CRM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// First name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Other columns of the import, by column name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
}

impl CustomerUpserted {
    /// Consumer-side checks: the number is E.164, ids and names are of
    /// bounded length without control characters, at most 100 fields.
    pub fn validate(&self) -> Result<(), ContractError> {
        if !is_e164(&self.phone) {
            return Err(bad("phone", "must be E.164 (+ and 2-15 digits)"));
        }
        check_id("campaign_id", &self.campaign_id)?;
        for (field, v, max) in [
            ("team", &self.team, 64),
            ("external_id", &self.external_id, 128),
            ("first_name", &self.first_name, 100),
            ("last_name", &self.last_name, 100),
        ] {
            if let Some(v) = v {
                if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
                    return Err(bad(
                        field,
                        format!("must be 1-{max} characters without control characters"),
                    ));
                }
            }
        }
        if self.fields.len() > 100 {
            return Err(bad("fields", "at most 100"));
        }
        for (k, v) in &self.fields {
            if k.is_empty() || k.len() > 64 || v.chars().count() > 1000 {
                return Err(bad(
                    "fields",
                    "names are 1-64 characters and values at most 1,000",
                ));
            }
        }
        Ok(())
    }
}

/// `campaign.updated`: a campaign's settings that other services copy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CampaignUpdated {
    /// The campaign.
    pub campaign_id: String,
    /// Its team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Days its call detail records are kept; `None`: the deployment's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdr_retention_days: Option<u32>,
    /// Days its recordings are kept; `None`: the deployment's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_retention_days: Option<u32>,
    /// Increases with every change of the campaign (ms since epoch of the
    /// change): a consumer keeps the highest.
    pub version: i64,
}

impl CampaignUpdated {
    /// Consumer-side checks.
    pub fn validate(&self) -> Result<(), ContractError> {
        check_id("campaign_id", &self.campaign_id)?;
        for (field, v) in [
            ("cdr_retention_days", self.cdr_retention_days),
            ("recording_retention_days", self.recording_retention_days),
        ] {
            if v.is_some_and(|d| !(1..=36_500).contains(&d)) {
                return Err(bad(field, "must be 1-36500"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_targets_are_sip_uris_with_a_host_and_nothing_else() {
        let t = |target: &str| {
            TransferCommand {
                call_id: "c-1".into(),
                target: target.into(),
                requested_by: None,
            }
            .validate()
        };
        for ok in [
            "sip:2001@pbx.example",
            "SIPS:sales@10.1.2.3:5061;transport=tls",
            "sip:pbx.example",
            "sip:q@[2001:db8::1]:5060",
        ] {
            assert_eq!(t(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "characters"),
            ("tel:+14155550101", "sip: or sips:"),
            ("sip:", "host"),
            ("sip:user@", "host"),
            ("sip:a@h\r\nX-Injected: 1", "spaces"),
            ("sip:a@h>;x", "<>"),
            ("sip:a b@h", "spaces"),
            ("http://evil.example/", "sip: or sips:"),
        ] {
            let e = t(bad).unwrap_err();
            assert_eq!(e.field, "target", "{bad}");
            assert!(e.reason.contains(why), "{bad}: {e}");
        }
        let long = format!("sip:{}@h", "a".repeat(MAX_TRANSFER_TARGET));
        assert_eq!(t(&long).unwrap_err().field, "target");
        let bad_call = TransferCommand {
            call_id: "c 1".into(),
            target: "sip:a@h".into(),
            requested_by: None,
        };
        assert_eq!(bad_call.validate().unwrap_err().field, "call_id");
        // A payload with an unknown shape does not parse.
        assert!(serde_json::from_str::<TransferCommand>(r#"{"call_id":"c"}"#).is_err());
    }

    #[test]
    fn instance_routes_are_one_topic_word_per_instance() {
        assert_eq!(
            instance_route(types::HANGUP, "media-7f-0190abc"),
            "hangup.media-7f-0190abc"
        );
        // Dots, wildcards and anything else become '-': one word, so a
        // binding of one instance never matches another's key.
        assert_eq!(
            instance_route(types::TRANSFER, "pod.ns.svc*#x y"),
            "transfer.pod-ns-svc--x-y"
        );
        let long = instance_route(types::TRANSFER, &"x".repeat(500));
        assert!(long.len() <= 128, "{}", long.len());
        assert_eq!(long.matches('.').count(), 1);
    }

    fn dial() -> DialCommand {
        DialCommand {
            attempt_id: "0190a1b2-attempt".into(),
            call_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            campaign_id: "k1".into(),
            phone: "+14155550101".into(),
            caller_id: "+14155550100".into(),
            talk_time_ms: 5_000,
            ring_timeout_ms: 30_000,
            team: Some("east".into()),
            record: true,
            recording_retention_days: Some(90),
            bridge: None,
            ivr: None,
            amd: None,
            transcribe: false,
            fields: Default::default(),
        }
    }

    #[test]
    fn dial_commands_are_checked_field_by_field() {
        assert_eq!(dial().validate(), Ok(()));
        type Mutation = Box<dyn Fn(&mut DialCommand)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("phone", Box::new(|d| d.phone = "14155550101".into())),
            ("phone", Box::new(|d| d.phone = "+1415\r\nX: y".into())),
            ("phone", Box::new(|d| d.phone = "+0123".into())),
            ("phone", Box::new(|d| d.phone = "+1234567890123456".into())),
            ("caller_id", Box::new(|d| d.caller_id = String::new())),
            ("caller_id", Box::new(|d| d.caller_id = "anonymous".into())),
            ("call_id", Box::new(|d| d.call_id = "a b".into())),
            ("call_id", Box::new(|d| d.call_id = "c1\r\nVia: x".into())),
            ("call_id", Box::new(|d| d.call_id = "x".repeat(65))),
            ("attempt_id", Box::new(|d| d.attempt_id = String::new())),
            ("campaign_id", Box::new(|d| d.campaign_id = "k;1".into())),
            ("ring_timeout_ms", Box::new(|d| d.ring_timeout_ms = 0)),
            (
                "ring_timeout_ms",
                Box::new(|d| d.ring_timeout_ms = u64::MAX),
            ),
            ("talk_time_ms", Box::new(|d| d.talk_time_ms = 3_600_001)),
            ("team", Box::new(|d| d.team = Some(String::new()))),
            ("team", Box::new(|d| d.team = Some("a\nb".into()))),
        ];
        for (field, mutate) in cases {
            let mut d = dial();
            mutate(&mut d);
            assert_eq!(d.validate().unwrap_err().field, field, "{d:?}");
        }
    }

    fn ready() -> RecordingReady {
        RecordingReady {
            call: CallRef {
                call_id: "c1".into(),
                attempt_id: "a1".into(),
                campaign_id: "k1".into(),
                phone: "+14155550101".into(),
                at_ms: 1,
                team: None,
            },
            url: "s3://recs/dialstack/k1/c1.wav".into(),
            duration_ms: 3_000,
            bytes: 96_044,
            sha256: "ab".repeat(32),
            retention_days: Some(30),
        }
    }

    #[test]
    fn recording_ready_is_checked_and_flat() {
        let r = ready();
        assert_eq!(r.validate(), Ok(()));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["call_id"], "c1", "the call reference is flattened");
        assert_eq!(serde_json::from_value::<RecordingReady>(v).unwrap(), r);
        let mut bad = ready();
        bad.url = "http://elsewhere/c1.wav".into();
        assert_eq!(bad.validate().unwrap_err().field, "url");
        let mut bad = ready();
        bad.url = format!("file:///{}", "a".repeat(1100));
        assert_eq!(bad.validate().unwrap_err().field, "url");
        let mut bad = ready();
        bad.sha256 = "zz".repeat(32);
        assert_eq!(bad.validate().unwrap_err().field, "sha256");
        let mut bad = ready();
        bad.sha256.pop();
        assert_eq!(bad.validate().unwrap_err().field, "sha256");
        let mut bad = ready();
        bad.call.call_id = "c1\r\nX: y".into();
        assert_eq!(bad.validate().unwrap_err().field, "call_id");
    }

    #[test]
    fn quality_round_trips_and_rtt_is_optional() {
        let q = Quality {
            packets_received: 150,
            packets_lost: 1,
            packets_late: 2,
            packets_duplicated: 0,
            jitter_ms_mean: 1.5,
            jitter_ms_max: 4.0,
            jitter_buffer_ms: 50.0,
            concealed_ms: 60,
            rtt_ms: None,
            r_factor: 90.1,
            mos: 4.35,
        };
        let v = serde_json::to_value(&q).unwrap();
        assert!(v.get("rtt_ms").is_none());
        assert_eq!(serde_json::from_value::<Quality>(v).unwrap(), q);
    }

    #[test]
    fn names_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(*o));
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        for r in FailReason::ALL {
            assert_eq!(FailReason::parse(r.as_str()), Some(*r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(Outcome::parse("nope"), None);
        assert_eq!(FailReason::parse("Timeout"), None);
    }

    #[test]
    fn call_events_parse_by_type_and_refuse_broken_data() {
        let call = CallRef {
            call_id: "c1".into(),
            attempt_id: "a1".into(),
            campaign_id: "k1".into(),
            phone: "+14155550101".into(),
            at_ms: 7,
            team: None,
        };
        let done = CallCompleted {
            sip_status: Some(486),
            ..CallCompleted::unanswered(call.clone(), Outcome::Busy, None)
        };
        let ev = CallEvent::Completed(done.clone());
        let back = CallEvent::parse(types::CALL_COMPLETED, &ev.to_value())
            .unwrap()
            .unwrap();
        assert_eq!(back, ev);
        assert_eq!(back.call(), &call);
        // The flattened wire shape: call fields beside the event's own.
        let v = ev.to_value();
        assert_eq!(v["call_id"], "c1");
        assert_eq!(v["outcome"], "busy");
        assert!(v.get("reason").is_none());
        let answered = CallEvent::Answered(CallAnswered {
            call: call.clone(),
            ring_ms: 900,
        });
        assert_eq!(
            CallEvent::parse(types::CALL_ANSWERED, &answered.to_value()).unwrap(),
            Some(answered)
        );
        assert_eq!(
            CallEvent::parse("agent.state", &serde_json::json!({})),
            Ok(None)
        );
        // Unknown outcome or reason, missing outcome, oversized id.
        let mut v = CallEvent::Completed(done.clone()).to_value();
        v["outcome"] = "exploded".into();
        assert_eq!(
            CallEvent::parse(types::CALL_COMPLETED, &v)
                .unwrap_err()
                .field,
            "data"
        );
        let mut v = CallEvent::Completed(done.clone()).to_value();
        v["reason"] = "because".into();
        assert!(CallEvent::parse(types::CALL_COMPLETED, &v).is_err());
        let mut v = CallEvent::Completed(done.clone()).to_value();
        v.as_object_mut().unwrap().remove("outcome");
        assert!(CallEvent::parse(types::CALL_COMPLETED, &v).is_err());
        let mut v = CallEvent::Completed(done).to_value();
        v["call_id"] = "x".repeat(37).into();
        assert_eq!(
            CallEvent::parse(types::CALL_COMPLETED, &v)
                .unwrap_err()
                .field,
            "call_id"
        );
        assert!(CallEvent::parse(types::CALL_DIALING, &serde_json::json!("str")).is_err());
    }

    #[test]
    fn bridge_specs_and_dispositions_name_what_is_wrong() {
        let mut cmd = dial();
        cmd.bridge = Some(BridgeSpec::default());
        // The default wait is the legal 2 s once read from JSON.
        let spec: BridgeSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.abandon_after_ms, 2_000);
        assert!(spec.abandon_message.is_empty());
        // A campaign's own message travels with the spec and is checked by
        // the rules of prompts; an empty one is left out of the JSON.
        let with_text: BridgeSpec = serde_json::from_value(serde_json::json!({
            "abandon_message": {"text": "This is Acme, call us on 0800 123 456.", "voice": "en-us"}
        }))
        .unwrap();
        assert!(with_text.validate().is_ok());
        assert!(!serde_json::to_string(&spec)
            .unwrap()
            .contains("abandon_message"));
        let e = serde_json::from_value::<BridgeSpec>(serde_json::json!({
            "abandon_message": {"txt": "typo"}
        }));
        assert!(e.is_err(), "unknown fields of a message are refused");
        cmd.bridge = Some(spec.clone());
        assert!(cmd.validate().is_ok());
        for (bad, field) in [
            (
                BridgeSpec {
                    abandon_after_ms: 50,
                    ..spec.clone()
                },
                "bridge.abandon_after_ms",
            ),
            (
                BridgeSpec {
                    agent_id: Some("a b".into()),
                    ..spec.clone()
                },
                "bridge.agent_id",
            ),
            (
                BridgeSpec {
                    skills: [("spanish".to_owned(), 11u8)].into(),
                    ..spec.clone()
                },
                "bridge.skills",
            ),
            (
                BridgeSpec {
                    skills: (0..20).map(|i| (format!("s{i}"), 1u8)).collect(),
                    ..spec.clone()
                },
                "bridge.skills",
            ),
            (
                BridgeSpec {
                    abandon_message: ivr::Say {
                        text: Some("Hello {first name}".into()),
                        ..ivr::Say::default()
                    },
                    ..spec.clone()
                },
                "bridge.abandon_message",
            ),
            (
                BridgeSpec {
                    abandon_message: ivr::Say {
                        prompt: Some("p1".into()),
                        text: Some("both".into()),
                        ..ivr::Say::default()
                    },
                    ..spec.clone()
                },
                "bridge.abandon_message",
            ),
        ] {
            cmd.bridge = Some(bad);
            assert_eq!(cmd.validate().unwrap_err().field, field);
        }
        let ok = CallDisposition {
            call_id: "c1".into(),
            attempt_id: "a1".into(),
            campaign_id: "k1".into(),
            agent_id: "ag".into(),
            code: "CALLBACK".into(),
            note: None,
            callback_at_ms: Some(1),
            at_ms: 1,
        };
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.code = "DROP TABLE".into();
        assert_eq!(bad.validate().unwrap_err().field, "code");
        let mut bad = ok.clone();
        bad.note = Some("x".repeat(1_001));
        assert_eq!(bad.validate().unwrap_err().field, "note");
        // A bridged event parses as a call event; one missing its agent does not.
        let call = serde_json::json!({"call_id": "c1", "attempt_id": "a1", "campaign_id": "k1", "phone": "+14155550101", "at_ms": 1});
        let mut v = call.clone();
        v["agent_id"] = "ag".into();
        v["wait_ms"] = 10.into();
        v["agent_ring_ms"] = 5.into();
        assert!(matches!(
            CallEvent::parse(types::CALL_BRIDGED, &v),
            Ok(Some(CallEvent::Bridged(_)))
        ));
        assert!(CallEvent::parse(types::CALL_BRIDGED, &call).is_err());
    }
}
