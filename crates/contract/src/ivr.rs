//! IVR flows, answering-machine detection settings and what they produce.
//!
//! A flow is a small graph of named nodes that media-processor walks on an
//! answered call: [`IvrNode::Play`] a prompt, [`IvrNode::Gather`] digits or
//! speech, [`IvrNode::Branch`] on what was gathered, [`IvrNode::Record`] a
//! message, [`IvrNode::Transfer`] to an agent, [`IvrNode::Webhook`] the
//! data out, [`IvrNode::Hangup`]. Voice broadcast is `play` then `hangup`.
//! The campaign's flow is validated when the campaign is written
//! ([`IvrFlow::validate`], every error naming the node) and travels in each
//! `dial` command, so media-processor needs no lookup to run it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{bad, ContractError};

/// Most nodes in a flow.
pub const MAX_IVR_NODES: usize = 64;
/// Most nodes one call walks through (loops through `retry` or `branch`
/// end here: the call is hung up).
pub const MAX_IVR_STEPS: usize = 200;
/// Longest prompt text (characters, before lead fields are filled in).
pub const MAX_PROMPT_TEXT: usize = 1_000;
/// Longest message a `record` node takes (ms).
pub const MAX_RECORD_MS: u64 = 300_000;
/// Most digits one `gather` takes.
pub const MAX_GATHER_DIGITS: u8 = 32;
/// Most `branch` cases or grammar keywords.
pub const MAX_CASES: usize = 32;

/// A campaign's IVR flow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IvrFlow {
    /// The first node.
    pub start: String,
    /// The nodes by name.
    pub nodes: BTreeMap<String, IvrNode>,
}

/// What a node says or plays: a stored prompt, or text rendered by TTS
/// (lead fields such as `{first_name}` filled in per call).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Say {
    /// A stored prompt's id (`POST /v1/prompts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Text for TTS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The TTS voice (`en-us` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// Words per minute (80-450; 160 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u16>,
}

impl Say {
    /// Whether nothing is to be said.
    pub fn is_empty(&self) -> bool {
        self.prompt.is_none() && self.text.is_none()
    }

    /// The rules of a message said outside a flow (a campaign's compliance
    /// message); errors name `field`.
    pub fn check(&self, field: &'static str, required: bool) -> Result<(), ContractError> {
        self.validate(field, required).map_err(|e| {
            let prefix = format!("node '{field}': ");
            bad(field, e.reason.strip_prefix(&prefix).unwrap_or(&e.reason))
        })
    }

    fn validate(&self, node: &str, required: bool) -> Result<(), ContractError> {
        match (&self.prompt, &self.text) {
            (Some(_), Some(_)) => {
                return Err(node_err(node, "give either prompt or text, not both"))
            }
            (None, None) if required => return Err(node_err(node, "needs a prompt or a text")),
            _ => {}
        }
        if let Some(p) = &self.prompt {
            if crate::check_id("prompt", p).is_err() {
                return Err(node_err(node, "prompt must be a prompt id"));
            }
        }
        if let Some(t) = &self.text {
            if t.trim().is_empty() || t.chars().count() > MAX_PROMPT_TEXT {
                return Err(node_err(
                    node,
                    format!("text must be 1-{MAX_PROMPT_TEXT} characters"),
                ));
            }
            check_template(node, t)?;
        }
        if let Some(v) = &self.voice {
            if !valid_voice(v) {
                return Err(node_err(
                    node,
                    "voice must be 1-40 of letters, digits and +-_",
                ));
            }
        }
        if let Some(r) = self.rate {
            if !(80..=450).contains(&r) {
                return Err(node_err(node, "rate must be 80-450 words per minute"));
            }
        }
        Ok(())
    }
}

/// Whether `v` can name a TTS voice (it reaches the engine as one argument,
/// never through a shell).
pub fn valid_voice(v: &str) -> bool {
    (1..=40).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-_".contains(&b))
}

/// Checks `{field}` placeholders: names of lowercase letters, digits and
/// `_`, braces balanced (`{{` and `}}` are literal braces).
pub fn check_template(node: &str, t: &str) -> Result<(), ContractError> {
    let mut chars = t.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for (_, c) in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    name.push(c);
                }
                if !closed {
                    return Err(node_err(node, format!("unclosed '{{' at character {i}")));
                }
                let ok = (1..=40).contains(&name.len())
                    && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !ok {
                    return Err(node_err(
                        node,
                        format!("'{{{name}}}' at character {i} is not a field name (a-z, 0-9, _)"),
                    ));
                }
            }
            '}' => return Err(node_err(node, format!("unmatched '}}' at character {i}"))),
            _ => {}
        }
    }
    Ok(())
}

/// Fills `{field}` placeholders from `fields` (a missing field becomes
/// empty text; values lose control characters, are cut at 200
/// characters, and `[[`, the TTS engine's phoneme input, is broken up). The template must have passed [`check_template`].
pub fn render_template(t: &str, fields: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(t.len());
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                if let Some(v) = fields.get(&name) {
                    // `[[` starts espeak-ng's phoneme input: a lead's data
                    // is only ever spoken as words.
                    let clean: String = v.chars().filter(|c| !c.is_control()).take(200).collect();
                    out.push_str(&clean.replace("[[", "[ ["));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// One node of a flow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum IvrNode {
    /// Plays a prompt (and/or sends DTMF to the far end), then goes on.
    Play {
        /// What to play.
        #[serde(flatten)]
        say: Say,
        /// Keys to send to the far end after the prompt (RFC 4733), for
        /// navigating a remote IVR: `0-9*#A-D`, `,` is a 500 ms pause.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dtmf: Option<String>,
        /// The next node (`None`: hang up).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Collects digits (RFC 4733 or in-band tones) or speech into `var`.
    Gather {
        /// The variable the result goes into (what `branch` reads).
        var: String,
        /// `dtmf` or `speech`.
        #[serde(default)]
        input: GatherInput,
        /// Played first (a key press interrupts it).
        #[serde(default, skip_serializing_if = "Say::is_empty")]
        say: Say,
        /// Most digits (DTMF; 1-32, default 1).
        #[serde(default = "one")]
        max_digits: u8,
        /// A key that ends the input early (`#` usually; not kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        terminator: Option<char>,
        /// How long to wait for the first input, and between digits (ms,
        /// 500-30,000, default 5,000).
        #[serde(default = "default_gather_timeout")]
        timeout_ms: u64,
        /// Times the prompt is replayed after no input (0-5, default 2).
        #[serde(default = "two")]
        retries: u8,
        /// What speech may say (required with `speech`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grammar: Option<SpeechGrammar>,
        /// The next node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
        /// Where to go when nothing came after the retries (default: `next`
        /// with an empty value).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        no_input: Option<String>,
    },
    /// Goes to the node named for the value of `var`.
    Branch {
        /// The variable.
        var: String,
        /// Value → node.
        cases: BTreeMap<String, String>,
        /// When no case matches.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default: Option<String>,
    },
    /// Records a message from the callee into the recordings store.
    Record {
        /// Played first.
        #[serde(default, skip_serializing_if = "Say::is_empty")]
        say: Say,
        /// Longest message (ms, 1,000-300,000, default 60,000).
        #[serde(default = "default_record_ms")]
        max_ms: u64,
        /// Silence that ends the message (ms, 500-30,000, default 3,000).
        #[serde(default = "default_record_silence")]
        silence_ms: u64,
        /// A key that ends it (`#` by default).
        #[serde(default = "pound")]
        terminator: Option<char>,
        /// The next node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Connects the callee to an agent (the agent bridge); the flow ends.
    Transfer {
        /// Skills the agent must have (name → lowest level 1-10).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        skills: BTreeMap<String, u8>,
        /// Where to go when no agent is free in time (default: hang up).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        no_agent: Option<String>,
    },
    /// POSTs what was collected to a URL (HMAC-SHA256 signed, retried).
    Webhook {
        /// `http://` or `https://`.
        url: String,
        /// The next node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
        /// Where to go when every try failed (default: `next`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_error: Option<String>,
    },
    /// Ends the call.
    Hangup {},
}

fn one() -> u8 {
    1
}
fn two() -> u8 {
    2
}
fn pound() -> Option<char> {
    Some('#')
}
fn default_gather_timeout() -> u64 {
    5_000
}
fn default_record_ms() -> u64 {
    60_000
}
fn default_record_silence() -> u64 {
    3_000
}

/// How a `gather` listens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum GatherInput {
    /// Key presses.
    #[default]
    Dtmf,
    /// Speech recognized against the node's grammar (a key press is
    /// taken too).
    Speech,
}

/// What speech a `gather` understands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SpeechGrammar {
    /// "yes" or "no" (and their casual forms); the value is `yes` or `no`.
    YesNo {},
    /// Spoken digits; the value is the digit string.
    Digits {
        /// Most digits (1-32).
        #[serde(default = "default_speech_digits")]
        max: u8,
    },
    /// One of a list of words (lowercase, in the recognizer's dictionary).
    Keywords {
        /// The words.
        words: Vec<String>,
    },
}

fn default_speech_digits() -> u8 {
    4
}

/// Whether `c` is a DTMF key.
pub fn is_dtmf_key(c: char) -> bool {
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')
}

fn node_err(node: &str, reason: impl std::fmt::Display) -> ContractError {
    bad("ivr_flow", format!("node '{node}': {reason}"))
}

impl IvrNode {
    /// The nodes this one can go to.
    pub fn targets(&self) -> Vec<&str> {
        let mut t: Vec<&str> = Vec::new();
        match self {
            IvrNode::Play { next, .. } | IvrNode::Record { next, .. } => t.extend(next.as_deref()),
            IvrNode::Gather { next, no_input, .. } => {
                t.extend(next.as_deref());
                t.extend(no_input.as_deref());
            }
            IvrNode::Branch { cases, default, .. } => {
                t.extend(default.as_deref());
                t.extend(cases.values().map(String::as_str));
            }
            IvrNode::Transfer { no_agent, .. } => t.extend(no_agent.as_deref()),
            IvrNode::Webhook { next, on_error, .. } => {
                t.extend(next.as_deref());
                t.extend(on_error.as_deref());
            }
            IvrNode::Hangup {} => {}
        }
        t
    }

    fn validate(&self, name: &str) -> Result<(), ContractError> {
        match self {
            IvrNode::Play { say, dtmf, .. } => {
                say.validate(name, dtmf.is_none())?;
                if let Some(d) = dtmf {
                    if d.is_empty()
                        || d.len() > 64
                        || !d.chars().all(|c| is_dtmf_key(c) || c == ',')
                    {
                        return Err(node_err(name, "dtmf must be 1-64 of 0-9*#A-D and ','"));
                    }
                }
            }
            IvrNode::Gather {
                var,
                input,
                say,
                max_digits,
                terminator,
                timeout_ms,
                retries,
                grammar,
                ..
            } => {
                check_var(name, var)?;
                say.validate(name, false)?;
                if !(1..=MAX_GATHER_DIGITS).contains(max_digits) {
                    return Err(node_err(
                        name,
                        format!("max_digits must be 1-{MAX_GATHER_DIGITS}"),
                    ));
                }
                if terminator.is_some_and(|t| !is_dtmf_key(t)) {
                    return Err(node_err(name, "terminator must be a DTMF key"));
                }
                if !(500..=30_000).contains(timeout_ms) {
                    return Err(node_err(name, "timeout_ms must be 500-30000"));
                }
                if *retries > 5 {
                    return Err(node_err(name, "retries must be 0-5"));
                }
                match (input, grammar) {
                    (GatherInput::Speech, None) => {
                        return Err(node_err(name, "speech input needs a grammar"))
                    }
                    (_, Some(SpeechGrammar::Digits { max })) if !(1..=32).contains(max) => {
                        return Err(node_err(name, "grammar.max must be 1-32"))
                    }
                    (_, Some(SpeechGrammar::Keywords { words })) => {
                        if words.is_empty() || words.len() > MAX_CASES {
                            return Err(node_err(
                                name,
                                format!("grammar.words must hold 1-{MAX_CASES} words"),
                            ));
                        }
                        if let Some(w) = words.iter().find(|w| {
                            !(1..=32).contains(&w.len())
                                || !w.bytes().all(|b| b.is_ascii_lowercase() || b == b'\'')
                        }) {
                            return Err(node_err(
                                name,
                                format!("grammar word '{w}' must be 1-32 lowercase letters"),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            IvrNode::Branch { var, cases, .. } => {
                check_var(name, var)?;
                if cases.is_empty() || cases.len() > MAX_CASES {
                    return Err(node_err(
                        name,
                        format!("cases must hold 1-{MAX_CASES} values"),
                    ));
                }
                if let Some(k) = cases
                    .keys()
                    .find(|k| k.len() > 64 || k.chars().any(char::is_control))
                {
                    return Err(node_err(
                        name,
                        format!("case '{k}' is too long or has control characters"),
                    ));
                }
            }
            IvrNode::Record {
                say,
                max_ms,
                silence_ms,
                terminator,
                ..
            } => {
                say.validate(name, false)?;
                if !(1_000..=MAX_RECORD_MS).contains(max_ms) {
                    return Err(node_err(
                        name,
                        format!("max_ms must be 1000-{MAX_RECORD_MS}"),
                    ));
                }
                if !(500..=30_000).contains(silence_ms) {
                    return Err(node_err(name, "silence_ms must be 500-30000"));
                }
                if terminator.is_some_and(|t| !is_dtmf_key(t)) {
                    return Err(node_err(name, "terminator must be a DTMF key"));
                }
            }
            IvrNode::Transfer { skills, .. } => {
                let spec = crate::BridgeSpec {
                    skills: skills.clone(),
                    agent_id: None,
                    abandon_after_ms: 2_000,
                    abandon_message: Say::default(),
                };
                spec.validate()
                    .map_err(|e| node_err(name, format!("{}: {}", e.field, e.reason)))?;
            }
            IvrNode::Webhook { url, .. } => check_url(name, url)?,
            IvrNode::Hangup {} => {}
        }
        Ok(())
    }
}

fn check_var(node: &str, var: &str) -> Result<(), ContractError> {
    let ok = (1..=40).contains(&var.len())
        && var
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(node_err(node, "var must be 1-40 of a-z, 0-9 and _"))
    }
}

/// A webhook URL: `http(s)://host[:port]/path`, no credentials, no spaces
/// or control characters, at most 2,000 characters.
fn check_url(node: &str, url: &str) -> Result<(), ContractError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Err(node_err(node, "url must start with http:// or https://"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if url.len() > 2_000 || url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(node_err(
            node,
            "url must be at most 2000 characters without spaces",
        ));
    }
    if host.is_empty() || host.contains('@') {
        return Err(node_err(node, "url needs a host and no credentials"));
    }
    Ok(())
}

impl IvrFlow {
    /// The flow's rules: 1-64 nodes with id names, `start` and every
    /// target exist, each node's own fields are in range, and every node
    /// is reachable from `start` (a stray node is a typo). Errors name the
    /// node (field `ivr_flow`).
    pub fn validate(&self) -> Result<(), ContractError> {
        if self.nodes.is_empty() || self.nodes.len() > MAX_IVR_NODES {
            return Err(bad(
                "ivr_flow",
                format!("must have 1-{MAX_IVR_NODES} nodes"),
            ));
        }
        if !self.nodes.contains_key(&self.start) {
            return Err(bad(
                "ivr_flow",
                format!("start node '{}' does not exist", self.start),
            ));
        }
        for (name, node) in &self.nodes {
            if crate::check_id("node", name).is_err() {
                return Err(node_err(
                    name,
                    "node names are 1-64 of letters, digits and -_.",
                ));
            }
            node.validate(name)?;
            for t in node.targets() {
                if !self.nodes.contains_key(t) {
                    return Err(node_err(
                        name,
                        format!("goes to '{t}', which does not exist"),
                    ));
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = vec![self.start.as_str()];
        while let Some(n) = todo.pop() {
            if seen.insert(n) {
                if let Some(node) = self.nodes.get(n) {
                    todo.extend(node.targets());
                }
            }
        }
        if let Some(stray) = self.nodes.keys().find(|k| !seen.contains(k.as_str())) {
            return Err(node_err(
                stray,
                format!("cannot be reached from '{}'", self.start),
            ));
        }
        Ok(())
    }

    /// The stored prompts the flow plays.
    pub fn prompt_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .nodes
            .values()
            .filter_map(|n| match n {
                IvrNode::Play { say, .. }
                | IvrNode::Gather { say, .. }
                | IvrNode::Record { say, .. } => say.prompt.as_deref(),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Answering-machine detection for a campaign.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AmdSpec {
    /// `off` or `detect`.
    #[serde(default)]
    pub mode: AmdMode,
    /// What to do on a machine.
    #[serde(default)]
    pub on_machine: MachineAction,
    /// The message left on a machine (`on_machine: message`).
    #[serde(default, skip_serializing_if = "Say::is_empty")]
    pub message: Say,
}

impl AmdSpec {
    /// A message is given when the action is `message`; the message's own
    /// rules (field `amd`).
    pub fn validate(&self) -> Result<(), ContractError> {
        let need = self.on_machine == MachineAction::Message && self.mode == AmdMode::Detect;
        self.message
            .validate("amd.message", need)
            .map_err(|e| bad("amd", e.reason))
    }
}

/// Whether calls are screened for machines.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AmdMode {
    /// No detection.
    #[default]
    Off,
    /// Classify within 3.5 s of answer.
    Detect,
}

/// What to do when a machine answers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum MachineAction {
    /// Hang up at once.
    #[default]
    Hangup,
    /// Wait for the beep (or the end of the greeting), play the message,
    /// hang up.
    Message,
}

/// What answering-machine detection decided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AmdResult {
    /// `human`, `machine` or `unsure`.
    pub result: String,
    /// From answer to the decision (ms).
    pub decision_ms: u32,
    /// The rule that decided.
    pub reason: String,
    /// The features measured (for tuning): initial silence, greeting
    /// length, words, beep, ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, f64>,
    /// Whether the machine message was played in full.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub message_played: bool,
}

/// One value a `gather` collected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gathered {
    /// The digits or the recognized text (empty: nothing came).
    pub value: String,
    /// `dtmf`, `inband` (audio tones), `speech` or `none`.
    pub source: String,
    /// Recognizer confidence (0-1) for speech.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
}

/// What an IVR call did: the path through the flow and what was collected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct IvrResult {
    /// Nodes visited, in order (at most [`MAX_IVR_STEPS`]).
    pub path: Vec<String>,
    /// Gathered values by variable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, Gathered>,
    /// The node the call ended in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Recorded messages (recording keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
    /// Keys sent to the far end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtmf_sent: Option<String>,
}

impl IvrResult {
    /// The short result searched by `GET /v1/calls?ivr_result=`: the
    /// variables as `var=value` joined by `&`, in name order.
    pub fn summary(&self) -> String {
        self.vars
            .iter()
            .map(|(k, v)| format!("{k}={}", v.value))
            .collect::<Vec<_>>()
            .join("&")
    }
}

#[cfg(test)]
mod tests;
