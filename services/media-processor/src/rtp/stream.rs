//! The per-call media loop: one task per answered call.
//!
//! Every 20 ms (one grid for all calls) the loop reads what arrived since
//! the last tick in one `recvmmsg` with kernel arrival times ([`super::batch`]):
//! datagram → [`StreamGate`] (source and SSRC) → audio packets into the
//! jitter buffer and the RFC 3550 receiver statistics. Then the playout
//! clock takes one frame out of the jitter buffer (audio, concealed or
//! silence), sends one tone frame (RTP timestamp +160 per frame, marker
//! on the first packet of a talkspurt), and hands both to the recording.
//! Every 5 s an RTCP report goes to the peer's RTCP port (RTP + 1) and the
//! Prometheus counters move. Per packet nothing is allocated: packets are
//! built in a fixed buffer, payloads go into the jitter buffer's ring.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dialstack_contract::Quality;
use dialstack_media::dtmf::{EventReceiver, EventSender, TelephoneEvent};
use dialstack_media::g711::Codec;
use dialstack_media::jitter::{FrameKind, JitterBuffer, JitterConfig, JitterStats};
use dialstack_media::quality::{LossPattern, QualityInputs, ReceiverStats};
use dialstack_media::rtcp::RtcpSession;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::batch::{BatchReceiver, BATCH};
use super::metrics::MediaMetrics;
use super::{StreamGate, ToneStream, Verdict, RTP_PACKET_LEN};
use crate::recording::{Recorder, Recording};
use crate::sip::sdp::RemoteMedia;

/// What every call's media loop shares.
pub struct MediaContext {
    /// Jitter-buffer settings.
    pub jitter: JitterConfig,
    /// Latch RTP to the first packet's source.
    pub latch: bool,
    /// Metrics.
    pub metrics: MediaMetrics,
    /// The recorder (`None`: recording is off in this process).
    pub recorder: Option<Arc<Recorder>>,
}

impl MediaContext {
    /// Settings without a recorder, with metrics of their own (unregistered):
    /// for tests and benchmarks that place calls without the service.
    pub fn standalone(jitter: JitterConfig, latch: bool) -> Arc<Self> {
        Arc::new(Self {
            jitter,
            latch,
            metrics: MediaMetrics::new().expect("static metric definitions are valid"),
            recorder: None,
        })
    }
}

/// One 20 ms frame of 8 kHz linear audio.
pub type Frame = [i16; 160];

/// A bounded queue of frames between two media loops (a bridge) or from a
/// prompt player to a loop. Live audio is kept short ([`AudioPipe::push_live`]
/// drops the oldest frames beyond its live limit, [`LIVE_FRAMES`] unless
/// made with [`AudioPipe::listener`], so a stall never turns into delay);
/// a prompt is queued whole up to the pipe's capacity.
pub struct AudioPipe {
    q: std::sync::Mutex<std::collections::VecDeque<Frame>>,
    cap: usize,
    live: std::sync::atomic::AtomicUsize,
}

/// Frames of live audio a bridge keeps queued at most (60 ms).
pub const LIVE_FRAMES: usize = 3;

impl AudioPipe {
    /// A pipe holding at most `cap` frames.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            q: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(cap.min(64))),
            cap: cap.max(1),
            live: std::sync::atomic::AtomicUsize::new(LIVE_FRAMES),
        })
    }

    /// A pipe whose reader is not a media loop but a listener (IVR, speech
    /// recognition, machine detection) that wakes on its own schedule:
    /// live audio is kept up to `frames` before the oldest is dropped.
    pub fn listener(frames: usize) -> Arc<Self> {
        Arc::new(Self {
            q: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(frames.min(64))),
            cap: frames.max(1),
            live: std::sync::atomic::AtomicUsize::new(frames.max(1)),
        })
    }

    /// Makes a listener's pipe a bridge's again (at most [`LIVE_FRAMES`]
    /// queued) and drops what it holds: the IVR hands the callee to an
    /// agent.
    pub fn make_live(&self) {
        self.live
            .store(LIVE_FRAMES, std::sync::atomic::Ordering::Relaxed);
        self.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Frame>> {
        self.q
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a live frame, dropping the oldest beyond the live limit.
    pub fn push_live(&self, f: &Frame) {
        let live = self.live.load(std::sync::atomic::Ordering::Relaxed);
        let mut q = self.lock();
        while q.len() >= live {
            q.pop_front();
        }
        q.push_back(*f);
    }

    /// Queues `pcm` as frames (the last one padded with silence), up to
    /// the capacity; returns the frames queued.
    pub fn push_all(&self, pcm: &[i16]) -> usize {
        let mut q = self.lock();
        let mut n = 0;
        for chunk in pcm.chunks(160) {
            if q.len() >= self.cap {
                break;
            }
            let mut f = [0i16; 160];
            f[..chunk.len()].copy_from_slice(chunk);
            q.push_back(f);
            n += 1;
        }
        n
    }

    /// The next frame, if any.
    pub fn pop(&self) -> Option<Frame> {
        self.lock().pop_front()
    }

    /// Everything queued, oldest first.
    pub fn drain(&self) -> Vec<Frame> {
        self.lock().drain(..).collect()
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything queued.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// Where a key press came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// An RFC 4733 telephone-event.
    Rfc4733,
    /// Tones in the audio (Goertzel).
    Inband,
}

impl KeySource {
    /// The name used in results (`dtmf`, `inband`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Rfc4733 => "dtmf",
            KeySource::Inband => "inband",
        }
    }
}

/// Most keys queued either way (a peer flooding telephone-events cannot
/// grow memory).
pub const MAX_QUEUED_KEYS: usize = 64;

/// DTMF between a media loop and its controller (IVR): keys the peer sent
/// as telephone-events, and keys to send to it.
#[derive(Default)]
pub struct Keys {
    rfc4733_seen: std::sync::atomic::AtomicBool,
    received: std::sync::Mutex<std::collections::VecDeque<(char, KeySource)>>,
    to_send: std::sync::Mutex<std::collections::VecDeque<char>>,
}

impl Keys {
    /// New, empty.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A key the peer pressed (dropped beyond [`MAX_QUEUED_KEYS`]).
    pub fn received(&self, key: char, source: KeySource) {
        if source == KeySource::Rfc4733 {
            self.rfc4733_seen
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut q = self
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() < MAX_QUEUED_KEYS {
            q.push_back((key, source));
        }
    }

    /// Whether the peer sent telephone-events on this call (then tones in
    /// its audio are the same keys again, not new ones).
    pub fn rfc4733_seen(&self) -> bool {
        self.rfc4733_seen.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a key is waiting.
    pub fn has_received(&self) -> bool {
        !self
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    }

    /// The oldest key pressed and not yet taken.
    pub fn take(&self) -> Option<(char, KeySource)> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }

    /// Forgets keys pressed so far (type-ahead is not wanted).
    pub fn clear_received(&self) {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Queues keys to send (`,` is a 500 ms pause); returns how many were
    /// queued.
    pub fn send(&self, keys: &str) -> usize {
        let mut q = self
            .to_send
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut n = 0;
        for k in keys.chars() {
            if q.len() >= MAX_QUEUED_KEYS {
                break;
            }
            q.push_back(k);
            n += 1;
        }
        n
    }

    /// Keys still to send.
    pub fn sending(&self) -> usize {
        self.to_send
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    fn next_to_send(&self) -> Option<char> {
        self.to_send
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }
}

/// A media loop's audio when it is part of a bridge: what it hears goes
/// into `heard`, what it sends comes from `say` (silence when empty)
/// instead of the tone.
#[derive(Clone)]
pub struct BridgeIo {
    /// Where the decoded incoming audio goes (the other leg's `say`).
    pub heard: Arc<AudioPipe>,
    /// What this leg sends.
    pub say: Arc<AudioPipe>,
    /// DTMF in and out, for a controller that wants it (IVR).
    pub keys: Option<Arc<Keys>>,
}

/// An outgoing key press in progress.
struct KeyOut {
    sender: dialstack_media::dtmf::EventSender,
    start_ts: u32,
}

/// What the loop does about DTMF out: pressing a key, pausing, or idle.
enum KeyState {
    Idle,
    Pressing(KeyOut),
    /// Frames of silence left (between keys, and for `,`).
    Gap(u32),
}

/// What a stream counted, returned when it stops.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StreamReport {
    /// RTP packets sent.
    pub sent: u64,
    /// Packets accepted by the gate (audio and telephone-event).
    pub received: u64,
    /// Not RTP, or a payload type not negotiated.
    pub malformed: u64,
    /// From the wrong address.
    pub wrong_source: u64,
    /// Of the wrong SSRC.
    pub wrong_ssrc: u64,
    /// Quality of the incoming audio (`None` when no audio arrived).
    pub quality: Option<Quality>,
    /// Playout delay of the jitter buffer per played frame: median and
    /// 95th percentile (ms, 5 ms resolution).
    pub delay_p50_ms: u32,
    /// See `delay_p50_ms`.
    pub delay_p95_ms: u32,
    /// Frames played out (audio or concealed).
    pub frames_played: u64,
    /// 20 ms frames skipped because the stream fell more than
    /// [`MAX_CATCH_UP`] behind its grid (a stalled process): not sent,
    /// recorded as silence, so the recording keeps the call's length.
    pub frames_skipped: u64,
}

/// The longest stall (the process starved of CPU or paused) a stream makes
/// up by sending the missed frames at once. A longer gap is skipped whole:
/// a burst of more than ten frames would mostly be thrown away as late by
/// the peer's jitter buffer, and would load a machine that is already
/// behind.
pub const MAX_CATCH_UP: Duration = Duration::from_millis(200);

/// Playout delays per frame in 5 ms buckets up to 1 s: fixed size, so a
/// long call costs nothing more.
struct DelayHistogram([u32; 201]);

impl DelayHistogram {
    fn add(&mut self, ms: u32) {
        let i = ((ms / 5) as usize).min(self.0.len() - 1);
        self.0[i] = self.0[i].saturating_add(1);
    }

    fn quantile(&self, q: f64) -> u32 {
        let total: u64 = self.0.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return 0;
        }
        let want = (total as f64 * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &c) in self.0.iter().enumerate() {
            seen += u64::from(c);
            if seen >= want {
                return i as u32 * 5;
            }
        }
        1_000
    }
}

/// RTCP report interval in 20 ms ticks: 5 s (RFC 3550's minimum for a
/// two-party session).
const RTCP_TICKS: u64 = 250;
/// RTCP that arrived is read every 500 ms (its arrival time comes from the
/// kernel, so the RTT does not depend on when it is read).
const RTCP_READ_TICKS: u64 = 25;

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The RTP payload of a packet whose header `h` the gate accepted: after
/// the CSRCs and extension, before any padding; `None` when the lengths lie.
pub fn payload<'a>(buf: &'a [u8], h: &rtp::header::Header) -> Option<&'a [u8]> {
    use webrtc_util::marshal::MarshalSize;
    let start = h.marshal_size();
    let mut end = buf.len();
    if h.padding {
        let pad = *buf.last()? as usize;
        if pad == 0 {
            return None;
        }
        end = end.checked_sub(pad)?;
    }
    buf.get(start..end)
}

/// Counters already added to Prometheus, so each flush adds the difference.
#[derive(Default)]
struct Flushed {
    received: u64,
    lost: u64,
    late: u64,
    duplicates: u64,
    reordered: u64,
    concealed_frames: u64,
    underflows: u64,
}

impl Flushed {
    fn flush(&mut self, s: &JitterStats, m: &MediaMetrics) {
        let d = |now: u64, before: &mut u64| {
            let delta = now.saturating_sub(*before);
            *before = now.max(*before);
            delta
        };
        m.received.inc_by(d(s.received, &mut self.received));
        m.lost.inc_by(d(s.lost, &mut self.lost));
        m.late.inc_by(d(s.late, &mut self.late));
        m.events
            .with_label_values(&["duplicate"])
            .inc_by(d(s.duplicates, &mut self.duplicates));
        m.events
            .with_label_values(&["reordered"])
            .inc_by(d(s.reordered, &mut self.reordered));
        m.concealed
            .inc_by(d(s.concealed_frames, &mut self.concealed_frames) as f64 * 0.020);
        m.underflows.inc_by(d(s.underflows, &mut self.underflows));
    }
}

/// Runs the media of one answered call until `stop`; `media` carries
/// re-negotiations (re-INVITE, hold).
pub async fn run_stream(
    sock: UdpSocket,
    rtcp_sock: Option<UdpSocket>,
    mut media: watch::Receiver<RemoteMedia>,
    ctx: Arc<MediaContext>,
    mut recording: Option<Recording>,
    stop: CancellationToken,
    bridge: Option<BridgeIo>,
) -> StreamReport {
    let mut report = StreamReport::default();
    let mut tone = ToneStream::new();
    let mut jb = JitterBuffer::new(ctx.jitter.clone());
    let mut rx_stats = ReceiverStats::new();
    let mut loss = LossPattern::default();
    let mut rtcp = RtcpSession::new(tone.ssrc(), &format!("dialstack-{:08x}", tone.ssrc()));
    let mut flushed = Flushed::default();
    let t0 = Instant::now();
    // Kernel arrival times are wall-clock; this call's clock starts at t0.
    let unix0 = unix_us();
    let us = |at: Instant| at.duration_since(t0).as_micros() as u64;
    let sock = match sock.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "rtp socket unusable, call continues without media");
            return report;
        }
    };
    let mut reader = match BatchReceiver::new(&sock) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "rtp socket options refused, call continues without media");
            return report;
        }
    };
    // Every call ticks on the same 20 ms grid, so the runtime wakes once
    // per tick for all of them rather than at scattered instants. Ticks
    // missed while the process stalled are made up (one frame each, sent
    // at once) when the stall was at most MAX_CATCH_UP, and skipped when
    // longer, so the stream's recording and timestamps keep to the clock.
    let mut tick = tokio::time::interval_at(next_grid_tick(), FRAME);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut rtcp_io = rtcp_sock.and_then(|s| {
        let s = s.into_std().ok()?;
        let r = BatchReceiver::new(&s).ok()?;
        Some((s, r))
    });
    let mut out = [0u8; RTP_PACKET_LEN];
    let mut heard = [0i16; 160];
    let silence = [0i16; 160];
    let mut current = *media.borrow_and_update();
    let pts = |m: &RemoteMedia| [Some(m.payload_type), m.dtmf_payload_type];
    let mut gate = StreamGate::new(current.addr, ctx.latch, pts(&current));
    let mut remote_ssrc: Option<u32> = None;
    let mut audio_started = false;
    let mut delays = DelayHistogram([0; 201]);
    let mut ticks: u64 = 0;
    let keys = bridge.as_ref().and_then(|b| b.keys.clone());
    let mut events_in = EventReceiver::new();
    let mut key_state = KeyState::Idle;
    // One wake-up per 20 ms and nothing else: hang-ups and re-negotiations
    // are looked at on each tick (an atomic load each, no waiter to
    // register), RTCP is read every 5 s with kernel arrival times.
    loop {
        let due = tick.tick().await;
        if stop.is_cancelled() {
            break;
        }
        let skipped = frames_to_skip(Instant::now().saturating_duration_since(due.into_std()));
        if skipped > 0 {
            tone.skip(skipped);
            if let Some(rec) = recording.as_mut() {
                for _ in 0..skipped {
                    rec.push(&silence, &silence);
                }
            }
            report.frames_skipped += skipped;
            tick.reset_at(next_grid_tick());
        }
        match media.has_changed() {
            Err(_) => break,
            Ok(true) => {
                current = *media.borrow_and_update();
                gate.renegotiate(current.addr, pts(&current));
                tone.restart_talkspurt();
            }
            Ok(false) => {}
        }
        // Everything that arrived since the last tick, each packet at its
        // kernel arrival time.
        loop {
            let n = reader.recv(&sock);
            for i in 0..n {
                let (d, pkt) = reader.get(i);
                let Some(from) = d.from else { continue };
                let at = d
                    .arrival_unix_us
                    .map_or_else(|| us(Instant::now()), |a| a.saturating_sub(unix0));
                match gate.admit(pkt, from, Instant::now()) {
                    Ok(h) => {
                        report.received += 1;
                        if Some(h.payload_type) == current.dtmf_payload_type {
                            if let (Some(keys), Some(ev)) = (
                                keys.as_ref(),
                                payload(pkt, &h).and_then(TelephoneEvent::parse),
                            ) {
                                if let Some(k) = events_in.on_packet(h.timestamp, &ev) {
                                    keys.received(k, KeySource::Rfc4733);
                                }
                            }
                        } else if h.payload_type == current.payload_type {
                            if let (Some(codec), Some(body)) =
                                (Codec::from_payload_type(h.payload_type), payload(pkt, &h))
                            {
                                remote_ssrc = Some(h.ssrc);
                                rx_stats.on_packet(h.sequence_number, h.timestamp, h.ssrc, at);
                                jb.push(
                                    h.sequence_number,
                                    h.timestamp,
                                    h.ssrc,
                                    codec,
                                    body,
                                    h.marker,
                                    at,
                                );
                            }
                        }
                    }
                    Err(Verdict::WrongSource) => report.wrong_source += 1,
                    Err(Verdict::WrongSsrc) => report.wrong_ssrc += 1,
                    Err(_) => report.malformed += 1,
                }
            }
            if n < BATCH {
                break;
            }
        }
        let now = Instant::now();
        let kind = jb.pop(us(now), &mut heard);
        if matches!(kind, FrameKind::Audio) {
            audio_started = true;
        }
        if audio_started && !matches!(kind, FrameKind::Silence) {
            loss.record(matches!(kind, FrameKind::Concealed));
            delays.add(jb.stats().current_delay_ms);
            report.frames_played += 1;
        }
        // The clock advances on hold too; nothing is sent then.
        let sending = current.sending_allowed();
        let relayed;
        let mut len = RTP_PACKET_LEN;
        let sent_pcm: &[i16; 160] = match &bridge {
            Some(io) => {
                if audio_started {
                    io.heard.push_live(&heard);
                }
                relayed = io.say.pop().unwrap_or(silence);
                match key_packet(&mut key_state, keys.as_deref(), &current, &tone) {
                    Some((pt, ts, marker, body)) => {
                        len = tone.write_event(pt, sending, ts, marker, body, &mut out);
                        &silence
                    }
                    None => {
                        tone.write_pcm(current.payload_type, sending, &relayed, &mut out);
                        &relayed
                    }
                }
            }
            None => tone.write_packet(current.payload_type, sending, &mut out),
        };
        if sending {
            let to = gate.send_to(current.addr);
            if sock.send_to(&out[..len], to).is_ok() {
                report.sent += 1;
                rtcp.on_sent(tone.last_timestamp(), RTP_PACKET_LEN - 12);
            }
        }
        if let Some(rec) = recording.as_mut() {
            rec.push(&heard, if sending { sent_pcm } else { &silence });
        }
        ticks += 1;
        if ticks % RTCP_READ_TICKS == 0 {
            read_rtcp(&mut rtcp_io, &mut rtcp, &gate, &current, &ctx);
        }
        if ticks % RTCP_TICKS != 0 {
            continue;
        }
        flushed.flush(jb.stats(), &ctx.metrics);
        let Some((rs, _)) = rtcp_io.as_mut() else {
            continue;
        };
        if current.sending_allowed() || remote_ssrc.is_some() {
            let to = SocketAddr::new(
                gate.send_to(current.addr).ip(),
                current.addr.port().wrapping_add(1),
            );
            let pkt = rtcp.build_report(
                unix_us(),
                tone.last_timestamp(),
                remote_ssrc.map(|_| &mut rx_stats),
                remote_ssrc,
            );
            if rs.send_to(&pkt, to).is_ok() {
                ctx.metrics.rtcp.with_label_values(&["sent", "ok"]).inc();
            }
        }
    }
    read_rtcp(&mut rtcp_io, &mut rtcp, &gate, &current, &ctx);
    flushed.flush(jb.stats(), &ctx.metrics);
    if let Some(rec) = recording.take() {
        rec.finish().await;
    }
    report.quality = quality(jb.stats(), &rx_stats, &loss, rtcp.rtt_ms());
    report.delay_p50_ms = delays.quantile(0.5);
    report.delay_p95_ms = delays.quantile(0.95);
    if let Some(q) = &report.quality {
        ctx.metrics.mos.observe(q.mos);
        ctx.metrics.jitter.observe(q.jitter_ms_mean / 1_000.0);
        ctx.metrics
            .playout_delay
            .observe(q.jitter_buffer_ms / 1_000.0);
        ctx.metrics
            .target_delay
            .observe(f64::from(jb.stats().target_delay_ms) / 1_000.0);
    }
    report
}

/// Frames of silence between two keys sent (and after the last).
const KEY_GAP_FRAMES: u32 = 3;
/// Frames of a `,` pause (500 ms).
const KEY_PAUSE_FRAMES: u32 = 25;
/// How long each key sent is held (ms).
const KEY_MS: u32 = 100;

/// The telephone-event packet this frame carries instead of audio, if a
/// key is being sent: (payload type, event timestamp, marker, payload).
/// Keys are sent only when the peer negotiated telephone-event; without it
/// they are dropped (and logged once per key).
fn key_packet(
    state: &mut KeyState,
    keys: Option<&Keys>,
    current: &RemoteMedia,
    tone: &ToneStream,
) -> Option<(u8, u32, bool, [u8; 4])> {
    loop {
        match state {
            KeyState::Pressing(k) => {
                if let (Some((body, marker)), Some(pt)) =
                    (k.sender.next_packet(), current.dtmf_payload_type)
                {
                    return Some((pt, k.start_ts, marker, body));
                }
                *state = KeyState::Gap(KEY_GAP_FRAMES);
            }
            KeyState::Gap(n) => {
                if *n > 0 {
                    *n -= 1;
                    return None;
                }
                *state = KeyState::Idle;
            }
            KeyState::Idle => {
                let key = keys?.next_to_send()?;
                if key == ',' {
                    *state = KeyState::Gap(KEY_PAUSE_FRAMES);
                    continue;
                }
                match (EventSender::new(key, KEY_MS), current.dtmf_payload_type) {
                    (Some(sender), Some(_)) => {
                        *state = KeyState::Pressing(KeyOut {
                            sender,
                            start_ts: tone.next_timestamp(),
                        });
                    }
                    (None, _) => tracing::warn!(%key, "not a DTMF key, not sent"),
                    (_, None) => {
                        tracing::warn!(%key, "the peer did not offer telephone-event, key not sent")
                    }
                }
            }
        }
    }
}

/// One frame of audio: the stream's tick.
const FRAME: Duration = Duration::from_millis(20);

/// Frames to skip when a tick comes `late` after its due time: none when
/// the stream can catch up by sending the missed frames at once; beyond
/// [`MAX_CATCH_UP`], every whole frame of the delay (one frame is still
/// sent now, and the grid resumes at the next 20 ms boundary).
fn frames_to_skip(late: Duration) -> u64 {
    if late <= MAX_CATCH_UP {
        return 0;
    }
    (late.as_micros() / FRAME.as_micros()) as u64
}

/// The next instant on the process-wide 20 ms grid.
fn next_grid_tick() -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let now = tokio::time::Instant::now();
    let since = now.duration_since(epoch).as_micros() as u64;
    let frame = FRAME.as_micros() as u64;
    epoch + Duration::from_micros((since / frame + 1) * frame)
}

/// Reads the RTCP that arrived (each report at its kernel arrival time) and
/// counts it: only the peer's RTCP address may report on the call (a
/// stranger's forged report would skew the RTT or wipe the peer's last SR):
/// RTP port + 1 of the negotiated address, or, when latching to a NATed
/// peer, its latched IP.
fn read_rtcp(
    io: &mut Option<(std::net::UdpSocket, BatchReceiver)>,
    rtcp: &mut RtcpSession,
    gate: &StreamGate,
    current: &RemoteMedia,
    ctx: &MediaContext,
) {
    let Some((rs, rr)) = io.as_mut() else { return };
    loop {
        let n = rr.recv(rs);
        for i in 0..n {
            let (d, pkt) = rr.get(i);
            let Some(from) = d.from else { continue };
            let peer = if ctx.latch {
                gate.source.map(|s| s.ip()) == Some(from.ip())
            } else {
                from == SocketAddr::new(current.addr.ip(), current.addr.port().wrapping_add(1))
            };
            let at = d.arrival_unix_us.unwrap_or_else(unix_us);
            let result = if !peer {
                "foreign"
            } else if rtcp.on_receive(pkt, at).is_ok() {
                "ok"
            } else {
                "malformed"
            };
            ctx.metrics
                .rtcp
                .with_label_values(&["received", result])
                .inc();
        }
        if n < BATCH {
            break;
        }
    }
}

/// The call's quality from what the jitter buffer and the statistics saw;
/// `None` when no audio arrived at all.
pub fn quality(
    jb: &JitterStats,
    rx: &ReceiverStats,
    loss: &LossPattern,
    rtt_ms: Option<f64>,
) -> Option<Quality> {
    if jb.received == 0 {
        return None;
    }
    let jitter_buffer_ms = if jb.played_frames == 0 {
        0.0
    } else {
        jb.delay_ms_sum as f64 / jb.played_frames as f64
    };
    let summary = dialstack_media::quality::summarize(&QualityInputs {
        expected: (jb.received - jb.duplicates.min(jb.received)) + jb.lost,
        lost: jb.lost,
        late: jb.late,
        burst_ratio: loss.burst_ratio(),
        jitter_buffer_delay_ms: jitter_buffer_ms,
        rtt_ms,
        plc: true,
    })?;
    Some(Quality {
        packets_received: jb.received,
        packets_lost: jb.lost,
        packets_late: jb.late,
        packets_duplicated: jb.duplicates,
        jitter_ms_mean: rx.mean_jitter_ms(),
        jitter_ms_max: rx.max_jitter_ms(),
        jitter_buffer_ms,
        concealed_ms: jb.concealed_frames * 20,
        rtt_ms,
        r_factor: summary.r_factor,
        mos: summary.mos,
    })
}
