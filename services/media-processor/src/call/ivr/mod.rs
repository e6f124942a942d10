//! The controller of an answered call with an IVR flow or machine
//! detection: it listens to the callee (the leg's [`BridgeIo`]: decoded
//! audio and RFC 4733 keys) and talks to it (prompts paced frame by frame
//! by the leg's media loop, keys sent as telephone-events).
//!
//! 1. Machine detection (campaign `amd: detect`): the callee's first
//!    seconds go through [`dialstack_media::amd::AmdDetector`]; a machine
//!    is hung up, or hears the campaign's message after its beep (or the
//!    end of its greeting); `unsure` goes on as a person.
//! 2. The flow ([`walk`]): `play`, `gather` (keys by RFC 4733 or in-band
//!    tones, or speech against a grammar), `branch`, `record`, `transfer`
//!    (the agent bridge), `webhook`, `hangup`; at most
//!    [`dialstack_contract::ivr::MAX_IVR_STEPS`] steps per call.
//! 3. Without a flow, a person goes to the agent bridge when the campaign
//!    has agents, else the call goes on for its talk time.
//!
//! - [`listen`]: the callee's audio: in-band keys, speech capture, silence
//! - [`webhook`]: the signed POST of a `webhook` node

pub mod listen;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_contract::ivr::{
    render_template, AmdMode, GatherInput, Gathered, IvrNode, MachineAction, Say, SpeechGrammar,
    MAX_IVR_STEPS,
};
use dialstack_contract::{AmdResult, BridgeSpec, DialCommand, IvrFlow, IvrResult, Outcome};
use dialstack_media::amd::{AmdConfig, AmdDetector, AmdVerdict, BeepDetector, SilenceWaiter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CallContext, Progress};
use crate::ai::asr::{Asr, Grammar};
use crate::ai::tts::{Tts, TtsRequest};
use crate::rtp::stream::{BridgeIo, KeySource};
use listen::Listener;

/// Frames of the callee's audio the controller may fall behind by (5 s).
pub const LISTEN_FRAMES: usize = 250;
/// Longest IVR call that did not reach an agent.
pub const MAX_IVR_CALL: Duration = Duration::from_secs(30 * 60);
/// Longest utterance a speech `gather` takes (s).
const MAX_UTTERANCE: Duration = Duration::from_secs(8);
/// Silence that ends an utterance.
const END_OF_UTTERANCE_MS: u32 = 700;
/// How long a machine's greeting may go on before its message is played
/// anyway.
const MAX_GREETING_WAIT: Duration = Duration::from_secs(30);
/// Frames of prompt kept queued ahead of the media loop (400 ms): enough
/// to ride over a slow tick, little enough that a barge-in stops at once.
const AHEAD_FRAMES: usize = 20;

/// A stored prompt as the flow plays it.
#[derive(Debug, Clone)]
pub enum PromptAudio {
    /// Audio (8 kHz linear), uploaded or rendered when it was stored.
    Pcm(Arc<Vec<i16>>),
    /// Text with lead fields, rendered per call.
    Text {
        /// The template.
        text: String,
        /// TTS voice.
        voice: String,
        /// Words per minute.
        rate: u16,
    },
}

/// Where stored prompts come from (media-processor's database; tests use
/// their own).
#[async_trait::async_trait]
pub trait PromptSource: Send + Sync {
    /// The prompt `id`, `Ok(None)` when there is none.
    async fn load(&self, id: &str) -> anyhow::Result<Option<PromptAudio>>;
}

/// IVR counters.
#[derive(Clone)]
pub struct IvrMetrics {
    /// `dialstack_amd_decisions_total{result}`: human, machine, unsure.
    pub amd: prometheus::IntCounterVec,
    /// `dialstack_dtmf_digits_total{source}`: keys received (dtmf, inband)
    /// and sent (`sent`).
    pub dtmf: prometheus::IntCounterVec,
    /// `dialstack_ivr_nodes_total{type}`: flow steps taken.
    pub nodes: prometheus::IntCounterVec,
    /// `dialstack_ivr_webhooks_total{result}`: ok, failed.
    pub webhooks: prometheus::IntCounterVec,
    /// `dialstack_amd_decision_seconds`: answer to decision.
    pub amd_seconds: prometheus::Histogram,
}

impl IvrMetrics {
    /// The definitions (register them with the service's registry).
    pub fn new() -> prometheus::Result<Self> {
        let vec = |name: &str, help: &str, label: &str| {
            prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &[label])
        };
        Ok(Self {
            amd: vec(
                "dialstack_amd_decisions_total",
                "answering-machine detection decisions by result: human, machine, unsure",
                "result",
            )?,
            dtmf: vec(
                "dialstack_dtmf_digits_total",
                "DTMF keys by source: dtmf (RFC 4733 received), inband (tones received), sent",
                "source",
            )?,
            nodes: vec(
                "dialstack_ivr_nodes_total",
                "IVR flow steps taken, by node type",
                "type",
            )?,
            webhooks: vec(
                "dialstack_ivr_webhooks_total",
                "IVR webhook deliveries by result: ok, failed (after retries)",
                "result",
            )?,
            amd_seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "dialstack_amd_decision_seconds",
                    "from answer to the answering-machine decision",
                )
                .buckets(vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]),
            )?,
        })
    }

    /// Registers every metric.
    pub fn register(&self, m: &dialstack_common::metrics::Metrics) {
        m.register(&self.amd);
        m.register(&self.dtmf);
        m.register(&self.nodes);
        m.register(&self.webhooks);
        m.register(&self.amd_seconds);
    }
}

/// What every IVR call shares.
pub struct IvrContext {
    /// Text to speech.
    pub tts: Arc<Tts>,
    /// Speech recognition.
    pub asr: Arc<Asr>,
    /// Stored prompts.
    pub prompts: Arc<dyn PromptSource>,
    /// Webhook delivery.
    pub webhooks: webhook::Webhooks,
    /// Where `record` messages go (`None`: recording is off here; the node
    /// is skipped).
    pub messages: Option<Arc<dialstack_common::recordings::RecordingStore>>,
    /// Machine detection settings.
    pub amd: AmdConfig,
    /// Counters.
    pub metrics: IvrMetrics,
}

/// One call's controller.
pub struct Job {
    /// The leg's context.
    pub ctx: CallContext,
    /// Engines.
    pub ictx: Arc<IvrContext>,
    /// The command.
    pub cmd: DialCommand,
    /// The callee's audio and keys.
    pub io: BridgeIo,
    /// When the callee answered.
    pub answered_at: Instant,
    /// Progress of the call.
    pub progress: mpsc::UnboundedSender<Progress>,
    /// Cancel to hang up the callee.
    pub end_callee: CancellationToken,
    /// Cancelled when the callee's leg ended.
    pub callee_gone: CancellationToken,
    /// Cancelled when an agent is connected (talk time starts).
    pub connected: CancellationToken,
    /// The process is shutting down.
    pub shutdown: CancellationToken,
}

/// How the controller ended.
#[derive(Debug, Default)]
pub struct IvrEnd {
    /// The outcome when it is not `answered_human` (machine, unsure).
    pub outcome: Option<Outcome>,
    /// The flow's result.
    pub ivr: Option<IvrResult>,
    /// Machine detection.
    pub amd: Option<AmdResult>,
    /// The agent side, when the call reached the bridge.
    pub bridge: super::bridge::BridgeEnd,
}

/// Runs the controller until the flow ends or the callee hangs up.
pub fn run(job: Job) -> std::pin::Pin<Box<dyn std::future::Future<Output = IvrEnd> + Send>> {
    Box::pin(run_job(job))
}

async fn run_job(job: Job) -> IvrEnd {
    let mut end = IvrEnd::default();
    let mut ear = Listener::new(&job.io, job.ictx.metrics.dtmf.clone());
    let detect = job
        .cmd
        .amd
        .as_ref()
        .is_some_and(|a| a.mode == AmdMode::Detect);
    if detect {
        let (verdict, result) = detect_machine(&job, &mut ear).await;
        end.amd = Some(result);
        match verdict {
            AmdVerdict::Machine => {
                end.outcome = Some(Outcome::AnsweredMachine);
                let leave_message = job
                    .cmd
                    .amd
                    .as_ref()
                    .is_some_and(|a| a.on_machine == MachineAction::Message);
                if leave_message && !job.callee_gone.is_cancelled() {
                    let played = machine_message(&job, &mut ear).await;
                    if let Some(a) = end.amd.as_mut() {
                        a.message_played = played;
                    }
                }
                job.end_callee.cancel();
                return end;
            }
            AmdVerdict::Unsure => end.outcome = Some(Outcome::AmdUnsure),
            AmdVerdict::Human => {}
        }
    }
    if job.callee_gone.is_cancelled() {
        return end;
    }
    if let Some(flow) = job.cmd.ivr.clone() {
        let (result, bridge) = walk(&job, &mut ear, &flow).await;
        end.ivr = Some(result);
        end.bridge = bridge;
        job.end_callee.cancel();
    } else if let Some(spec) = job.cmd.bridge.clone() {
        end.bridge = transfer(&job, spec).await;
    } else {
        // Detection only: the call goes on for the campaign's talk time.
        job.connected.cancel();
    }
    end
}

/// Classifies the callee within the detector's analysis time.
async fn detect_machine(job: &Job, ear: &mut Listener) -> (AmdVerdict, AmdResult) {
    let cfg = job.ictx.amd.clone();
    let limit = Duration::from_millis(u64::from(cfg.total_analysis_ms) + 500);
    let mut det = AmdDetector::new(cfg);
    let started = job.answered_at;
    let mut decision = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while decision.is_none() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = job.callee_gone.cancelled() => break,
        }
        for f in ear.frames() {
            if let Some(d) = det.push(&f) {
                decision = Some(d);
                break;
            }
        }
        if started.elapsed() > limit {
            break;
        }
    }
    let d = decision.unwrap_or_else(|| det.finish());
    let m = &job.ictx.metrics;
    m.amd.with_label_values(&[d.verdict.as_str()]).inc();
    m.amd_seconds.observe(f64::from(d.at_ms) / 1_000.0);
    let f = &d.features;
    let features: BTreeMap<String, f64> = [
        ("initial_silence_ms", f64::from(f.initial_silence_ms)),
        ("greeting_ms", f64::from(f.greeting_ms)),
        ("words", f64::from(f.words)),
        ("longest_word_ms", f64::from(f.longest_word_ms)),
        ("beep", if f.beep { 1.0 } else { 0.0 }),
        ("noise_floor", f64::from(f.noise_floor)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    tracing::info!(call_id = %job.cmd.call_id, verdict = d.verdict.as_str(), at_ms = d.at_ms, reason = d.reason, "machine detection");
    (
        d.verdict,
        AmdResult {
            result: d.verdict.as_str().to_owned(),
            decision_ms: d.at_ms,
            reason: d.reason.to_owned(),
            features,
            message_played: false,
        },
    )
}

/// Waits for the machine's beep (or the end of its greeting), then plays
/// the campaign's message; whether it was played in full.
async fn machine_message(job: &Job, ear: &mut Listener) -> bool {
    let Some(say) = job.cmd.amd.as_ref().map(|a| a.message.clone()) else {
        return false;
    };
    let mut beep = BeepDetector::new(160);
    let mut quiet = SilenceWaiter::new(1_500, job.ictx.amd.silence_threshold);
    let until = Instant::now() + MAX_GREETING_WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    'wait: loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = job.callee_gone.cancelled() => return false,
        }
        for f in ear.frames() {
            if beep.push(&f) || quiet.push(&f) {
                break 'wait;
            }
        }
        if Instant::now() > until {
            break;
        }
    }
    let Some(pcm) = audio_of(job, &say).await else {
        return false;
    };
    matches!(play(job, ear, &pcm, false).await, Played::Done)
}

/// How a prompt ended.
#[derive(Debug, PartialEq, Eq)]
enum Played {
    /// Played in full.
    Done,
    /// A key was pressed (barge-in): the rest was dropped.
    Interrupted,
    /// The callee hung up.
    Gone,
}

/// Plays `pcm` to the callee, a few frames ahead of its media loop;
/// `barge_in`: a key press stops it.
async fn play(job: &Job, ear: &mut Listener, pcm: &[i16], barge_in: bool) -> Played {
    let frames: Vec<&[i16]> = pcm.chunks(160).collect();
    let mut next = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        while next < frames.len() && job.io.say.len() < AHEAD_FRAMES {
            job.io.say.push_all(frames[next]);
            next += 1;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = job.callee_gone.cancelled() => return Played::Gone,
        }
        // Keep listening while talking: keys, and the pipe never fills.
        ear.frames();
        if barge_in && ear.has_keys() {
            job.io.say.clear();
            return Played::Interrupted;
        }
        if next >= frames.len() && job.io.say.is_empty() {
            return Played::Done;
        }
    }
}

/// The audio of `say`: a stored prompt, or text rendered (lead fields
/// filled in) by TTS; `None` (logged) when it cannot be had.
async fn audio_of(job: &Job, say: &Say) -> Option<Arc<Vec<i16>>> {
    render_say(&job.ictx, say, &job.cmd).await
}

/// The audio of `say` for the call of `cmd` (its lead fields filled in):
/// a stored prompt, or text rendered by TTS; `None` (logged) when it
/// cannot be had.
pub async fn render_say(ictx: &IvrContext, say: &Say, cmd: &DialCommand) -> Option<Arc<Vec<i16>>> {
    let call_id = &cmd.call_id;
    let (text, voice, rate) = match (&say.prompt, &say.text) {
        (Some(id), _) => match ictx.prompts.load(id).await {
            Ok(Some(PromptAudio::Pcm(pcm))) => return Some(pcm),
            Ok(Some(PromptAudio::Text { text, voice, rate })) => (text, voice, rate),
            Ok(None) => {
                tracing::warn!(%call_id, prompt = %id, "prompt not found, skipped");
                return None;
            }
            Err(e) => {
                tracing::warn!(%call_id, prompt = %id, error = %e, "prompt could not be loaded, skipped");
                return None;
            }
        },
        (None, Some(t)) => (
            t.clone(),
            say.voice.clone().unwrap_or_else(|| "en-us".to_owned()),
            say.rate.unwrap_or(160),
        ),
        (None, None) => return None,
    };
    let req = TtsRequest {
        text: render_template(&text, &cmd.fields),
        voice,
        rate_wpm: rate,
    };
    match ictx.tts.render(&req).await {
        Ok(r) => Some(r.pcm),
        Err(e) => {
            tracing::warn!(%call_id, error = %e, "text to speech failed, prompt skipped");
            None
        }
    }
}

/// Walks the flow; returns its result and the agent side when it reached
/// one.
async fn walk(
    job: &Job,
    ear: &mut Listener,
    flow: &IvrFlow,
) -> (IvrResult, super::bridge::BridgeEnd) {
    let mut result = IvrResult::default();
    let mut bridge = super::bridge::BridgeEnd::default();
    let mut at = Some(flow.start.clone());
    let mut steps = 0;
    while let Some(name) = at.take() {
        if job.callee_gone.is_cancelled() || job.shutdown.is_cancelled() {
            break;
        }
        if steps >= MAX_IVR_STEPS {
            tracing::warn!(call_id = %job.cmd.call_id, "IVR step limit reached, hanging up");
            break;
        }
        steps += 1;
        let Some(node) = flow.nodes.get(&name) else {
            break;
        };
        result.path.push(name.clone());
        result.ended_at = Some(name.clone());
        job.ictx
            .metrics
            .nodes
            .with_label_values(&[node_type(node)])
            .inc();
        at = match node {
            IvrNode::Play { say, dtmf, next } => {
                if !say.is_empty() {
                    if let Some(pcm) = audio_of(job, say).await {
                        if play(job, ear, &pcm, false).await == Played::Gone {
                            break;
                        }
                    }
                }
                if let Some(keys) = dtmf {
                    send_keys(job, keys).await;
                    result
                        .dtmf_sent
                        .get_or_insert_with(String::new)
                        .push_str(keys);
                }
                next.clone()
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
                next,
                no_input,
            } => {
                let spec = GatherSpec {
                    input: *input,
                    say,
                    max_digits: *max_digits,
                    terminator: *terminator,
                    timeout: Duration::from_millis(*timeout_ms),
                    retries: *retries,
                    grammar: grammar.as_ref(),
                };
                let got = gather(job, ear, &spec).await;
                let empty = got.value.is_empty();
                result.vars.insert(var.clone(), got);
                if empty && no_input.is_some() {
                    no_input.clone()
                } else {
                    next.clone()
                }
            }
            IvrNode::Branch {
                var,
                cases,
                default,
            } => {
                let value = result.vars.get(var).map(|g| g.value.as_str()).unwrap_or("");
                cases.get(value).cloned().or_else(|| default.clone())
            }
            IvrNode::Record {
                say,
                max_ms,
                silence_ms,
                terminator,
                next,
            } => {
                if let Some(key) = record(
                    job,
                    ear,
                    say,
                    *max_ms,
                    *silence_ms,
                    *terminator,
                    result.messages.len(),
                )
                .await
                {
                    result.messages.push(key);
                }
                next.clone()
            }
            IvrNode::Transfer { skills, no_agent } => {
                if job.ctx.bridge.is_none() {
                    tracing::warn!(call_id = %job.cmd.call_id, "transfer asked, but this process has no agent bridge");
                    no_agent.clone()
                } else {
                    let spec = BridgeSpec {
                        skills: skills.clone(),
                        agent_id: None,
                        abandon_after_ms: job
                            .cmd
                            .bridge
                            .as_ref()
                            .map_or(2_000, |b| b.abandon_after_ms),
                        abandon_message: job
                            .cmd
                            .bridge
                            .as_ref()
                            .map(|b| b.abandon_message.clone())
                            .unwrap_or_default(),
                    };
                    bridge = transfer(job, spec).await;
                    None
                }
            }
            IvrNode::Webhook {
                url,
                next,
                on_error,
            } => {
                let ok = job
                    .ictx
                    .webhooks
                    .deliver(url, &job.cmd, &result, &job.callee_gone)
                    .await;
                let label = if ok { "ok" } else { "failed" };
                job.ictx.metrics.webhooks.with_label_values(&[label]).inc();
                if ok {
                    next.clone()
                } else {
                    on_error.clone().or_else(|| next.clone())
                }
            }
            IvrNode::Hangup {} => None,
        };
    }
    (result, bridge)
}

fn node_type(n: &IvrNode) -> &'static str {
    match n {
        IvrNode::Play { .. } => "play",
        IvrNode::Gather { .. } => "gather",
        IvrNode::Branch { .. } => "branch",
        IvrNode::Record { .. } => "record",
        IvrNode::Transfer { .. } => "transfer",
        IvrNode::Webhook { .. } => "webhook",
        IvrNode::Hangup {} => "hangup",
    }
}

/// Hands the callee to the agent bridge (the listener's pipe becomes a
/// live one again).
async fn transfer(job: &Job, spec: BridgeSpec) -> super::bridge::BridgeEnd {
    let Some(bctx) = job.ctx.bridge.clone() else {
        job.connected.cancel();
        return super::bridge::BridgeEnd::default();
    };
    job.io.heard.make_live();
    job.io.say.clear();
    super::bridge::run(super::bridge::Job {
        ctx: job.ctx.clone(),
        bctx,
        cmd: job.cmd.clone(),
        spec,
        io: job.io.clone(),
        // The callee's wait for an agent runs from now: the law's 2 s are
        // counted from the end of the greeting (or of the IVR).
        answered_at: Instant::now(),
        progress: job.progress.clone(),
        end_callee: job.end_callee.clone(),
        callee_gone: job.callee_gone.clone(),
        connected: job.connected.clone(),
        shutdown: job.shutdown.clone(),
    })
    .await
}

/// Sends keys to the far end (RFC 4733) and waits until they are out.
async fn send_keys(job: &Job, keys: &str) {
    let Some(k) = job.io.keys.as_ref() else {
        return;
    };
    let n = k.send(keys);
    job.ictx
        .metrics
        .dtmf
        .with_label_values(&["sent"])
        .inc_by(keys.chars().filter(|c| *c != ',').count().min(n) as u64);
    // 100 ms per key plus its gap, 500 ms per pause; bounded.
    let limit = Instant::now() + Duration::from_millis(n as u64 * 600 + 500);
    while k.sending() > 0 && Instant::now() < limit {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = job.callee_gone.cancelled() => return,
        }
    }
    // The last key's packets (5 + 3 end) go out after it leaves the queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// A `gather` node's settings.
struct GatherSpec<'a> {
    input: GatherInput,
    say: &'a Say,
    max_digits: u8,
    terminator: Option<char>,
    timeout: Duration,
    retries: u8,
    grammar: Option<&'a SpeechGrammar>,
}

/// Collects keys or speech: the prompt (a key, also one pressed before
/// the node, interrupts it), then input
/// until `max_digits`, the terminator, or the timeout (before the first
/// key and between keys); the prompt is replayed up to `retries` times
/// when nothing came.
async fn gather(job: &Job, ear: &mut Listener, g: &GatherSpec<'_>) -> Gathered {
    let prompt = if g.say.is_empty() {
        None
    } else {
        audio_of(job, g.say).await
    };
    for attempt in 0..=g.retries {
        // Keys pressed before the node (type-ahead) count on the first
        // try; a retry starts afresh.
        if attempt > 0 {
            ear.clear_keys();
        }
        if let Some(pcm) = &prompt {
            if play(job, ear, pcm, true).await == Played::Gone {
                break;
            }
        }
        let got = match g.input {
            GatherInput::Dtmf => collect_keys(job, ear, g).await,
            GatherInput::Speech => listen_for_speech(job, ear, g).await,
        };
        if let Some(v) = got {
            return v;
        }
        if job.callee_gone.is_cancelled() {
            break;
        }
    }
    Gathered {
        value: String::new(),
        source: "none".to_owned(),
        confidence: None,
    }
}

/// Keys until the limit, the terminator or a timeout; `None` when none came.
async fn collect_keys(job: &Job, ear: &mut Listener, g: &GatherSpec<'_>) -> Option<Gathered> {
    let mut digits = String::new();
    let mut source = KeySource::Rfc4733;
    let mut deadline = Instant::now() + g.timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = job.callee_gone.cancelled() => break,
        }
        ear.frames();
        while let Some((k, src)) = ear.take_key() {
            if Some(k) == g.terminator {
                return finish_keys(digits, source);
            }
            digits.push(k);
            source = src;
            deadline = Instant::now() + g.timeout;
            if digits.len() >= usize::from(g.max_digits) {
                return finish_keys(digits, source);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    finish_keys(digits, source)
}

fn finish_keys(digits: String, source: KeySource) -> Option<Gathered> {
    (!digits.is_empty()).then(|| Gathered {
        value: digits,
        source: source.as_str().to_owned(),
        confidence: None,
    })
}

/// One utterance (speech start within the timeout, end at a pause or
/// [`MAX_UTTERANCE`]) recognized against the grammar; a key press is
/// taken instead. `None` when nothing usable came.
async fn listen_for_speech(job: &Job, ear: &mut Listener, g: &GatherSpec<'_>) -> Option<Gathered> {
    let grammar = match g.grammar? {
        SpeechGrammar::YesNo {} => Grammar::YesNo,
        SpeechGrammar::Digits { max } => Grammar::Digits { max: *max },
        SpeechGrammar::Keywords { words } => Grammar::Keywords(words.clone()),
    };
    let until_start = Instant::now() + g.timeout;
    let mut utterance = listen::Utterance::new(END_OF_UTTERANCE_MS);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut started_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = job.callee_gone.cancelled() => return None,
        }
        let mut done = false;
        for f in ear.frames() {
            if utterance.push(&f) {
                done = true;
                break;
            }
        }
        if let Some((k, src)) = ear.take_key() {
            let mut digits = String::new();
            digits.push(k);
            return finish_keys(digits, src);
        }
        if utterance.started() && started_at.is_none() {
            started_at = Some(Instant::now());
        }
        if done || started_at.is_some_and(|s| s.elapsed() > MAX_UTTERANCE) {
            break;
        }
        if started_at.is_none() && Instant::now() >= until_start {
            return None;
        }
    }
    let pcm = utterance.into_audio();
    match job.ictx.asr.recognize(&pcm, &grammar).await {
        Ok(r) if !r.text.is_empty() => Some(Gathered {
            value: r.text,
            source: "speech".to_owned(),
            confidence: Some(r.confidence),
        }),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(call_id = %job.cmd.call_id, error = %e, "speech recognition failed");
            None
        }
    }
}

/// Records a message: the prompt, a beep, then the callee until the
/// terminator key, `silence_ms` of silence after speech, or `max_ms`;
/// stored as a WAV in the recordings store. Returns its key.
async fn record(
    job: &Job,
    ear: &mut Listener,
    say: &Say,
    max_ms: u64,
    silence_ms: u64,
    terminator: Option<char>,
    n: usize,
) -> Option<String> {
    let store = job.ictx.messages.clone()?;
    if !say.is_empty() {
        if let Some(pcm) = audio_of(job, say).await {
            if play(job, ear, &pcm, false).await == Played::Gone {
                return None;
            }
        }
    }
    let beep = listen::beep();
    if play(job, ear, &beep, false).await == Played::Gone {
        return None;
    }
    ear.clear_keys();
    let mut msg = listen::Utterance::new(silence_ms.min(u64::from(u32::MAX)) as u32);
    msg.set_limit_ms(max_ms);
    let until = Instant::now() + Duration::from_millis(max_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let gone = tokio::select! {
            _ = tick.tick() => false,
            _ = job.callee_gone.cancelled() => true,
        };
        let mut done = false;
        for f in ear.frames() {
            if msg.push(&f) {
                done = true;
            }
        }
        if terminator.is_some()
            && std::iter::from_fn(|| ear.take_key()).any(|(k, _)| Some(k) == terminator)
        {
            done = true;
        }
        if gone || done || Instant::now() >= until || msg.is_full() {
            break;
        }
    }
    let pcm = msg.into_audio();
    if pcm.is_empty() {
        return None;
    }
    let key = format!("messages/{}/{}.wav", job.cmd.call_id, n + 1);
    let wav = crate::ai::audio::wav_8k(&pcm);
    match store.put_bytes(&key, wav.into()).await {
        Ok(()) => Some(key),
        Err(e) => {
            tracing::warn!(call_id = %job.cmd.call_id, error = %e, "storing the recorded message failed");
            None
        }
    }
}
