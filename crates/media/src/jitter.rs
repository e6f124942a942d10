//! The jitter buffer of one incoming G.711 stream: 8 kHz, one 20 ms frame
//! (160 samples) per packet. Packets go in as they arrive ([`JitterBuffer::push`]),
//! a 20 ms playout clock takes one frame out at a time ([`JitterBuffer::pop`]).
//!
//! # Timing
//! Frames are ordered by extended sequence number (RFC 3550 A.1: the 16-bit
//! number plus a count of wraps) and timed by the RTP timestamp: the first
//! packet anchors the mapping, so that the frame with (unwrapped) timestamp
//! `T` is due at `T / 8 ms + offset`, where `offset` starts as the first
//! packet's arrival minus its timestamp plus the target delay. A pop plays
//! the next frame in sequence once it is due (its time is at most 10 ms
//! after `now`, i.e. on the nearest 20 ms tick), so timestamp gaps (silence
//! suppression) stay silent for as long as the sender paused.
//!
//! The delay is adjusted in whole frames by moving `offset`: *expand*
//! inserts one concealed or silent frame (+20 ms), *accelerate* drops one
//! frame (−20 ms), when the current delay is more than half a frame off
//! the target. Both are done at once at a cheap point (the frame is
//! missing or quiet, starts a talkspurt, or for expand: the output is
//! already concealment or silence) and otherwise when the deviation has
//! lasted 8 ticks (2 ticks beyond ±2 frames). The *current delay* is
//! `offset` minus the smallest transit time (arrival − timestamp) of the
//! last 128 packets: how long a packet that took the fastest path waits. A
//! frame that is due with nothing at all buffered does not advance the
//! playout; when its packet then arrives behind its time, `offset` slips
//! to play it now (the delay grew by that much, and the controller brings
//! it back). Because the controller works on measured transit times, a
//! sender whose clock runs fast or slow is corrected by the same
//! accelerate and expand.
//!
//! # Target delay
//! Fixed mode: the configured nominal delay. Adaptive mode follows NetEQ
//! (WebRTC) rather than Speex: each packet's delay relative to the fastest
//! of the last 128 packets goes into a histogram of 20 ms buckets with a
//! forgetting factor of 0.983 (faster at the start), and the target is its
//! 95th percentile plus one frame, clamped to min..=max (it starts at the
//! nominal delay and goes below it only after one second). NetEQ's histogram
//! needs constant memory and no sorting per packet and forgets smoothly,
//! where Speex's windowed quantiles need a window of samples and jump as
//! old ones fall out.
//!
//! # Counters
//! Every sequence number of a stream, from the first one played to the
//! highest received, ends up counted exactly once (once its frame has been
//! due) as one of the following, so that `played_frames + late + lost +
//! discarded` is `highest − first + 1`:
//! - `played_frames`: decoded and played;
//! - `late`: arrived after its frame was played, concealed or dropped
//!   (also: packets below the first played one, and stragglers of an SSRC
//!   that was replaced);
//! - `lost`: never arrived, and its frame was due (or flushed by a resync
//!   or an overfull buffer) — a loss turns into `late` if the packet turns
//!   up after all;
//! - `discarded`: arrived in time but dropped: to accelerate, on a resync,
//!   when the buffer overflows, or as an unconfirmed sequence jump.
//!
//! `received` counts every push, `duplicates` the pushes of a sequence
//! number already seen, `reordered` the other pushes whose sequence number
//! is below the highest seen so far. `underflows` counts pops with a due
//! frame and nothing at all buffered, and pops before the first packet.
//!
//! # Resync
//! A new SSRC, or a sequence jump beyond 3000 forward or 100 backward
//! confirmed by a second packet in sequence (RFC 3550 A.1 probation),
//! flushes the buffer and anchors anew. A timestamp more than 2 s away from
//! what its sequence number predicts (sender clock reset, long pause) keeps
//! the buffer, re-bases the timestamps and restarts the transit measurement.
//!
//! # Payloads
//! Assumes ptime 20 (160 samples per packet), the only one the media
//! processor offers (`a=ptime:20`). A shorter payload, even an empty one, is
//! padded with silence (it still stands for its sequence number); a longer
//! one is truncated to 160 bytes and counted in `oversized`.
//!
//! All storage (64 slots of 160 bytes, about 1.3 s ahead of playout, and a
//! record of the last 256 sequence numbers played) is allocated in
//! [`JitterBuffer::new`]; push and pop do not allocate.

use crate::g711::Codec;
use crate::plc::{Plc, FRAME};

/// Slots in the ring: frames that can wait, 1.28 s.
const SLOTS: usize = 64;
/// Sequence numbers behind playout whose fate is remembered, to tell a late
/// packet from a duplicate.
const FATES: usize = 256;
/// Timestamp units per frame.
const FRAME_TS: i64 = FRAME as i64;
const FRAME_US: i64 = 20_000;
const HALF_FRAME_US: i64 = FRAME_US / 2;
/// Microseconds per timestamp unit at 8 kHz.
const US_PER_TS: i64 = 125;
/// RFC 3550 A.1: a forward jump beyond this is a new numbering, not loss.
const MAX_DROPOUT: i64 = 3_000;
/// RFC 3550 A.1: a packet this far behind the highest is a new numbering,
/// not a reordered one.
const MAX_MISORDER: i64 = 100;
/// A timestamp this far (2 s) from the one its sequence number predicts
/// means the sender's clock jumped.
const MAX_TS_JUMP: i64 = 16_000;
/// Packets over which the minimum transit time is taken (about 2.5 s).
const TRANSIT_WINDOW: usize = 128;
/// Histogram buckets of 20 ms.
const BUCKETS: usize = 64;
const QUANTILE: f64 = 0.95;
const FORGET: f64 = 0.983;
/// Packets (1 s) the histogram must have seen before it may take the target
/// below the nominal delay: one quiet second says little.
const LEARN_PACKETS: u64 = 50;
/// Mean absolute sample value below which a frame is quiet enough to drop
/// or to insert silence before (about −48 dBov).
const QUIET_MEAN_ABS: u32 = 128;
/// Ticks a deviation must last before it is corrected at a loud frame.
const SUSTAIN_TICKS: u32 = 8;
/// The same, for deviations beyond two frames.
const SUSTAIN_TICKS_FAR: u32 = 2;
/// Accepted range of every delay setting, in milliseconds.
const MS_RANGE: std::ops::RangeInclusive<u32> = 20..=1000;

const VAR_MS: &str = "DIALSTACK_JITTER_BUFFER_MS";
const VAR_MODE: &str = "DIALSTACK_JITTER_BUFFER_MODE";
const VAR_MIN: &str = "DIALSTACK_JITTER_BUFFER_MIN_MS";
const VAR_MAX: &str = "DIALSTACK_JITTER_BUFFER_MAX_MS";

/// How the target delay is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Always the nominal delay.
    Fixed,
    /// Follows the measured jitter, between the minimum and the maximum.
    Adaptive,
}

/// Jitter buffer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitterConfig {
    /// Fixed or adaptive target.
    pub mode: Mode,
    /// The delay of fixed mode, and where adaptive mode starts.
    pub nominal_ms: u32,
    /// Lowest target of adaptive mode.
    pub min_ms: u32,
    /// Highest target of adaptive mode.
    pub max_ms: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Fixed,
            nominal_ms: 50,
            min_ms: 20,
            max_ms: 200,
        }
    }
}

impl JitterConfig {
    /// Reads `DIALSTACK_JITTER_BUFFER_MS` (default 50),
    /// `DIALSTACK_JITTER_BUFFER_MODE` (`fixed` | `adaptive`, default fixed),
    /// `DIALSTACK_JITTER_BUFFER_MIN_MS` (default 20) and
    /// `DIALSTACK_JITTER_BUFFER_MAX_MS` (default 200) through `get`; an
    /// empty value counts as unset. Each delay must be 20-1000 ms, the
    /// minimum at most the maximum, and in adaptive mode the nominal delay
    /// within them. Errors are one line naming the variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let defaults = Self::default();
        let value = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mode = match value(VAR_MODE) {
            None => defaults.mode,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "fixed" => Mode::Fixed,
                "adaptive" => Mode::Adaptive,
                _ => return Err(format!("{VAR_MODE}: must be fixed or adaptive, got {v:?}")),
            },
        };
        let millis = |name: &str, default: u32| -> Result<u32, String> {
            let Some(v) = value(name) else {
                return Ok(default);
            };
            match v.parse::<u32>() {
                Ok(ms) if MS_RANGE.contains(&ms) => Ok(ms),
                _ => Err(format!("{name}: must be 20-1000 (milliseconds), got {v:?}")),
            }
        };
        let nominal_ms = millis(VAR_MS, defaults.nominal_ms)?;
        let min_ms = millis(VAR_MIN, defaults.min_ms)?;
        let max_ms = millis(VAR_MAX, defaults.max_ms)?;
        if min_ms > max_ms {
            return Err(format!(
                "{VAR_MIN}: must not exceed {VAR_MAX} ({max_ms}), got {min_ms}"
            ));
        }
        if mode == Mode::Adaptive && !(min_ms..=max_ms).contains(&nominal_ms) {
            return Err(format!(
                "{VAR_MS}: must be within {VAR_MIN} and {VAR_MAX} ({min_ms}-{max_ms}) in adaptive mode, got {nominal_ms}"
            ));
        }
        Ok(Self {
            mode,
            nominal_ms,
            min_ms,
            max_ms,
        })
    }

    /// The same settings forced into the accepted ranges, for a config
    /// built by hand.
    fn normalized(&self) -> Self {
        let min_ms = self.min_ms.clamp(*MS_RANGE.start(), *MS_RANGE.end());
        let max_ms = self.max_ms.clamp(min_ms, *MS_RANGE.end());
        let nominal_ms = match self.mode {
            Mode::Fixed => self.nominal_ms.clamp(*MS_RANGE.start(), *MS_RANGE.end()),
            Mode::Adaptive => self.nominal_ms.clamp(min_ms, max_ms),
        };
        Self {
            mode: self.mode,
            nominal_ms,
            min_ms,
            max_ms,
        }
    }
}

/// What [`JitterBuffer::pop`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A received frame, decoded.
    Audio,
    /// Synthesised by loss concealment: a lost frame (silent once 60 ms of
    /// concealment have passed), an inserted frame while audio was playing,
    /// or the first 60 ms of an underflow.
    Concealed,
    /// Zeros: before the first packet is due, and when nothing has played
    /// for 60 ms.
    Silence,
}

/// Counters of one jitter buffer; see the module documentation for the
/// exact definitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Every push.
    pub received: u64,
    /// Packets that arrived after their frame was played, concealed or dropped.
    pub late: u64,
    /// Sequence numbers never received whose frame was due.
    pub lost: u64,
    /// Pushes of a sequence number already received.
    pub duplicates: u64,
    /// Non-duplicate packets below the highest sequence number seen.
    pub reordered: u64,
    /// Frames of kind [`FrameKind::Concealed`].
    pub concealed_frames: u64,
    /// Pops with a due frame and nothing buffered at all, or before the
    /// first packet.
    pub underflows: u64,
    /// Re-anchors: SSRC change, confirmed sequence jump, timestamp jump.
    pub resyncs: u64,
    /// Delay of the playout schedule over the fastest recent packet.
    pub current_delay_ms: u32,
    /// What the delay is steered to.
    pub target_delay_ms: u32,
    /// Sum of (playout time − arrival time) over played frames, in ms; with
    /// `played_frames` the caller reports the mean.
    pub delay_ms_sum: u64,
    /// Frames played from received packets.
    pub played_frames: u64,
    /// Packets received in time but never played (accelerate, resync,
    /// overflow, unconfirmed sequence jump).
    pub discarded: u64,
    /// Payloads longer than 160 bytes, truncated.
    pub oversized: u64,
    /// Frames inserted to raise the delay.
    pub expanded: u64,
    /// Frames dropped to lower the delay.
    pub accelerated: u64,
}

/// The frame the last pop played, for tests and debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayedFrame {
    /// RTP sequence number.
    pub seq: u16,
    /// Extended sequence number; increases across resyncs too.
    pub ext_seq: u64,
    /// RTP timestamp.
    pub timestamp: u32,
    /// When the packet arrived.
    pub arrival_us: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    present: bool,
    seq: i64,
    raw_ts: u32,
    ts: i64,
    arrival: i64,
    codec: Codec,
    marker: bool,
    len: u8,
    data: [u8; FRAME],
}

impl Slot {
    const EMPTY: Slot = Slot {
        present: false,
        seq: -1,
        raw_ts: 0,
        ts: 0,
        arrival: 0,
        codec: Codec::Pcmu,
        marker: false,
        len: 0,
        data: [0; FRAME],
    };
}

/// What became of a sequence number playout has passed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Played,
    Discarded,
    Lost,
    Late,
}

/// One pushed packet, as the buffer handles it.
#[derive(Clone, Copy)]
struct Packet {
    seq: u16,
    timestamp: u32,
    codec: Codec,
    marker: bool,
    arrival: i64,
    len: u8,
    data: [u8; FRAME],
}

/// The jitter buffer of one incoming stream. See the module documentation.
pub struct JitterBuffer {
    mode: Mode,
    nominal_us: i64,
    min_us: i64,
    max_us: i64,
    stats: JitterStats,
    slots: Box<[Slot; SLOTS]>,
    /// Packets held in `slots`.
    buffered: usize,
    fates: Box<[(i64, Fate); FATES]>,
    anchored: bool,
    ssrc: u32,
    /// The SSRC replaced by the last SSRC change, with its highest raw and
    /// extended sequence numbers: its stragglers are late.
    abandoned: Option<(u32, u16, i64)>,
    /// Wrap count given to the next anchored stream, so that extended
    /// sequence numbers keep increasing across resyncs.
    epoch: i64,
    /// The highest extended sequence number received, its raw number and
    /// timestamp: the reference for unwrapping.
    highest: i64,
    highest_raw: u16,
    ref_raw_ts: u32,
    ref_ts: i64,
    /// Next extended sequence number to play.
    cursor: i64,
    /// Whether playout has moved past the anchor (after which an earlier
    /// packet is late instead of going first).
    cursor_moved: bool,
    /// Timestamp of the frame before the cursor.
    last_ts: i64,
    /// Frame with timestamp T is due at T × 125 µs + offset.
    offset: i64,
    transit: [i64; TRANSIT_WINDOW],
    transit_len: usize,
    transit_next: usize,
    min_transit: i64,
    histogram: [f64; BUCKETS],
    histogram_count: u64,
    target_us: i64,
    accel_ticks: u32,
    expand_ticks: u32,
    last_kind: FrameKind,
    /// A packet whose sequence number jumped, until the next confirms it.
    candidate: Option<Packet>,
    plc: Plc,
    last_played: Option<PlayedFrame>,
}

impl JitterBuffer {
    /// An empty buffer; all storage is allocated here.
    pub fn new(cfg: JitterConfig) -> Self {
        let cfg = cfg.normalized();
        let us = |ms: u32| i64::from(ms) * 1_000;
        Self {
            mode: cfg.mode,
            nominal_us: us(cfg.nominal_ms),
            min_us: us(cfg.min_ms),
            max_us: us(cfg.max_ms),
            stats: JitterStats {
                target_delay_ms: cfg.nominal_ms,
                ..JitterStats::default()
            },
            slots: Box::new([Slot::EMPTY; SLOTS]),
            buffered: 0,
            fates: Box::new([(-1, Fate::Lost); FATES]),
            anchored: false,
            ssrc: 0,
            abandoned: None,
            epoch: 1,
            highest: 0,
            highest_raw: 0,
            ref_raw_ts: 0,
            ref_ts: 0,
            cursor: 0,
            cursor_moved: false,
            last_ts: 0,
            offset: 0,
            transit: [0; TRANSIT_WINDOW],
            transit_len: 0,
            transit_next: 0,
            min_transit: 0,
            histogram: [0.0; BUCKETS],
            histogram_count: 0,
            target_us: us(cfg.nominal_ms),
            accel_ticks: 0,
            expand_ticks: 0,
            last_kind: FrameKind::Silence,
            candidate: None,
            plc: Plc::new(),
            last_played: None,
        }
    }

    /// Counters and delays so far.
    pub fn stats(&self) -> &JitterStats {
        &self.stats
    }

    /// The frame the last [`pop`](Self::pop) played, if it returned
    /// [`FrameKind::Audio`].
    pub fn last_played(&self) -> Option<PlayedFrame> {
        self.last_played
    }

    /// One accepted RTP audio packet (the caller already checked source and
    /// SSRC and filtered out telephone-event packets). `arrival_us`: arrival
    /// time in microseconds on the caller's monotonic clock.
    // One argument per header field the RTP loop has already parsed.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        ssrc: u32,
        codec: Codec,
        payload: &[u8],
        marker: bool,
        arrival_us: u64,
    ) {
        self.stats.received += 1;
        if payload.len() > FRAME {
            self.stats.oversized += 1;
        }
        let len = payload.len().min(FRAME);
        let mut data = [0u8; FRAME];
        data[..len].copy_from_slice(&payload[..len]);
        let packet = Packet {
            seq,
            timestamp,
            codec,
            marker,
            arrival: clock(arrival_us),
            // len <= FRAME = 160 fits.
            len: len as u8,
            data,
        };

        if !self.anchored {
            self.ssrc = ssrc;
            self.anchor(&packet);
            return;
        }
        if ssrc != self.ssrc {
            if self.straggler(ssrc, seq) {
                return;
            }
            self.abandoned = Some((self.ssrc, self.highest_raw, self.highest));
            self.ssrc = ssrc;
            self.drop_candidate();
            self.flush();
            self.anchor(&packet);
            return;
        }
        let delta = i64::from(seq.wrapping_sub(self.highest_raw) as i16);
        if !(-MAX_MISORDER..=MAX_DROPOUT).contains(&delta) {
            self.probation(packet);
            return;
        }
        self.drop_candidate();
        self.accept(self.highest + delta, &packet);
    }

    /// Writes the 160 samples due now into `out` and says what they are.
    /// Called every 20 ms by the playout clock.
    pub fn pop(&mut self, now_us: u64, out: &mut [i16; FRAME]) -> FrameKind {
        self.last_played = None;
        let kind = self.next_frame(clock(now_us), out);
        if kind == FrameKind::Concealed {
            self.stats.concealed_frames += 1;
        }
        self.last_kind = kind;
        kind
    }

    fn next_frame(&mut self, now: i64, out: &mut [i16; FRAME]) -> FrameKind {
        if !self.anchored {
            self.stats.underflows += 1;
            out.fill(0);
            return FrameKind::Silence;
        }
        self.skip_overdue(now);
        self.note_delay();
        if self.buffered == 0 {
            let (_, ts) = self.cursor_frame();
            if self.due_at(ts) <= now.saturating_add(HALF_FRAME_US) {
                self.stats.underflows += 1;
            }
            return self.fill(out);
        }
        let (present, ts) = self.cursor_frame();
        let due = self.due_at(ts);
        if due > now.saturating_add(HALF_FRAME_US) {
            return self.fill(out);
        }
        if present && due < now.saturating_sub(HALF_FRAME_US) {
            // It came after its time with nothing else to play: play it now
            // and accept the longer delay, which the controller then undoes.
            self.offset = self.offset.saturating_add(now.saturating_sub(due));
            self.note_delay();
        }

        // Within half a frame of the target a whole-frame step would not
        // get closer. Off by more, the step waits for a frame where it is
        // inaudible, unless the deviation persists.
        let excess = self.current_delay().saturating_sub(self.target_us);
        let far = excess.saturating_abs() > 2 * FRAME_US;
        let sustain = if far {
            SUSTAIN_TICKS_FAR
        } else {
            SUSTAIN_TICKS
        };
        self.accel_ticks = if excess > HALF_FRAME_US {
            self.accel_ticks.saturating_add(1)
        } else {
            0
        };
        self.expand_ticks = if excess < -HALF_FRAME_US {
            self.expand_ticks.saturating_add(1)
        } else {
            0
        };
        let cheap = !present || self.cursor_is_quiet() || self.cursor_slot().marker;

        if self.accel_ticks > 0 && self.next_is_present() && (cheap || self.accel_ticks >= sustain)
        {
            self.pass(Fate::Discarded);
            self.offset = self.offset.saturating_sub(FRAME_US);
            self.stats.accelerated += 1;
            self.accel_ticks = 0;
            self.note_delay();
            return self.play_cursor(now, out);
        }
        if self.expand_ticks > 0
            && (cheap || self.last_kind != FrameKind::Audio || self.expand_ticks >= sustain)
        {
            self.offset = self.offset.saturating_add(FRAME_US);
            self.stats.expanded += 1;
            self.expand_ticks = 0;
            self.note_delay();
            return self.fill(out);
        }
        self.play_cursor(now, out)
    }

    /// Plays the cursor's frame, or conceals it as lost.
    fn play_cursor(&mut self, now: i64, out: &mut [i16; FRAME]) -> FrameKind {
        match self.pass(Fate::Played) {
            Some(slot) => {
                let len = usize::from(slot.len);
                slot.codec.decode(&slot.data[..len], &mut out[..]);
                out[len..].fill(0);
                self.plc.good_frame(out);
                let waited = now.saturating_sub(slot.arrival).max(0);
                self.stats.played_frames += 1;
                self.stats.delay_ms_sum = self
                    .stats
                    .delay_ms_sum
                    .saturating_add((waited.saturating_add(500) / 1_000) as u64);
                self.last_played = Some(PlayedFrame {
                    seq: slot.seq as u16,
                    ext_seq: slot.seq.max(0) as u64,
                    timestamp: slot.raw_ts,
                    arrival_us: slot.arrival.max(0) as u64,
                });
                FrameKind::Audio
            }
            None => {
                self.plc.conceal(out);
                FrameKind::Concealed
            }
        }
    }

    /// A frame that is not played from a packet: concealment while there
    /// is something to continue, silence after.
    fn fill(&mut self, out: &mut [i16; FRAME]) -> FrameKind {
        let signal = self.plc.can_conceal();
        self.plc.conceal(out);
        if signal {
            FrameKind::Concealed
        } else {
            FrameKind::Silence
        }
    }

    /// Counts missing frames whose time has passed as lost, up to the next
    /// buffered one (after an outage the playout resumes on time instead
    /// of concealing the whole gap first).
    fn skip_overdue(&mut self, now: i64) {
        while self.buffered > 0 {
            let (present, ts) = self.cursor_frame();
            if present || self.due_at(ts) >= now.saturating_sub(HALF_FRAME_US) {
                break;
            }
            self.pass(Fate::Lost);
        }
    }

    /// Moves playout past the cursor's sequence number: a buffered frame is
    /// returned (and recorded as `fate`, counted if discarded), a missing one
    /// is counted lost.
    fn pass(&mut self, fate: Fate) -> Option<Slot> {
        let seq = self.cursor;
        let (_, ts) = self.cursor_frame();
        let slot = self.slots[slot_index(seq)];
        let taken = if slot.present && slot.seq == seq {
            self.slots[slot_index(seq)].present = false;
            self.buffered -= 1;
            if fate == Fate::Discarded {
                self.stats.discarded += 1;
            }
            self.set_fate(seq, fate);
            Some(slot)
        } else {
            self.stats.lost += 1;
            self.set_fate(seq, Fate::Lost);
            None
        };
        self.last_ts = ts;
        self.cursor += 1;
        self.cursor_moved = true;
        taken
    }

    /// Whether the cursor's frame is buffered, and its timestamp (estimated
    /// when missing: after the previous frame, or before the next buffered
    /// one if that is later, as after a pause).
    fn cursor_frame(&self) -> (bool, i64) {
        let slot = self.cursor_slot();
        if slot.present && slot.seq == self.cursor {
            return (true, slot.ts);
        }
        let mut ts = self.last_ts.saturating_add(FRAME_TS);
        for k in 1..SLOTS as i64 {
            let seq = self.cursor + k;
            if seq > self.highest {
                break;
            }
            let next = &self.slots[slot_index(seq)];
            if next.present && next.seq == seq {
                ts = ts.max(next.ts.saturating_sub(FRAME_TS * k));
                break;
            }
        }
        (false, ts)
    }

    fn cursor_slot(&self) -> &Slot {
        &self.slots[slot_index(self.cursor)]
    }

    fn next_is_present(&self) -> bool {
        let seq = self.cursor + 1;
        let slot = &self.slots[slot_index(seq)];
        slot.present && slot.seq == seq
    }

    fn cursor_is_quiet(&self) -> bool {
        let slot = self.cursor_slot();
        if !(slot.present && slot.seq == self.cursor) {
            return false;
        }
        let mut pcm = [0i16; FRAME];
        let len = usize::from(slot.len);
        slot.codec.decode(&slot.data[..len], &mut pcm);
        let total: u32 = pcm.iter().map(|s| s.unsigned_abs() as u32).sum();
        total <= QUIET_MEAN_ABS * FRAME as u32
    }

    fn due_at(&self, ts: i64) -> i64 {
        ts.saturating_mul(US_PER_TS).saturating_add(self.offset)
    }

    fn current_delay(&self) -> i64 {
        self.offset.saturating_sub(self.min_transit)
    }

    fn note_delay(&mut self) {
        self.stats.current_delay_ms = to_ms(self.current_delay());
        self.stats.target_delay_ms = to_ms(self.target_us);
    }

    /// Starts a stream on `packet`: playout of it is due after the target delay.
    fn anchor(&mut self, packet: &Packet) {
        self.anchored = true;
        let seq = self.epoch * 65_536 + i64::from(packet.seq);
        let ts = (1i64 << 32) + i64::from(packet.timestamp);
        self.highest = seq;
        self.highest_raw = packet.seq;
        self.ref_raw_ts = packet.timestamp;
        self.ref_ts = ts;
        self.cursor = seq;
        self.cursor_moved = false;
        self.last_ts = ts - FRAME_TS;
        self.offset = packet
            .arrival
            .saturating_sub(ts.saturating_mul(US_PER_TS))
            .saturating_add(self.target_us);
        self.accel_ticks = 0;
        self.expand_ticks = 0;
        self.reset_transit();
        self.store(seq, ts, packet);
        self.record_transit(packet.arrival.saturating_sub(ts.saturating_mul(US_PER_TS)));
    }

    /// Ends the current stream: what is buffered is discarded, what is
    /// missing below the highest sequence number is lost.
    fn flush(&mut self) {
        while self.cursor <= self.highest {
            self.pass(Fate::Discarded);
        }
        self.epoch = (self.highest.max(self.cursor) >> 16) + 2;
        self.stats.resyncs += 1;
    }

    /// A sequence number far from the highest: held until the next packet
    /// shows whether the sender renumbered (RFC 3550 A.1 probation).
    fn probation(&mut self, packet: Packet) {
        if let Some(held) = self.candidate {
            if packet.seq == held.seq {
                self.stats.duplicates += 1;
                return;
            }
            if packet.seq == held.seq.wrapping_add(1) {
                self.candidate = None;
                self.flush();
                self.anchor(&held);
                self.accept(self.highest + 1, &packet);
                return;
            }
            self.stats.discarded += 1;
        }
        self.candidate = Some(packet);
    }

    /// A packet of the SSRC replaced last, at or shortly below its highest
    /// sequence number: counted late (or duplicate), as its stream is over.
    /// Anything else from that SSRC is a switch back to it.
    fn straggler(&mut self, ssrc: u32, seq: u16) -> bool {
        let Some((old_ssrc, old_raw, old_highest)) = self.abandoned else {
            return false;
        };
        let delta = i64::from(seq.wrapping_sub(old_raw) as i16);
        if ssrc != old_ssrc || !(-MAX_MISORDER..=0).contains(&delta) {
            return false;
        }
        let seq = old_highest + delta;
        match self.fate(seq) {
            Some(Fate::Played | Fate::Discarded | Fate::Late) => self.stats.duplicates += 1,
            Some(Fate::Lost) => {
                self.stats.lost = self.stats.lost.saturating_sub(1);
                self.stats.late += 1;
                self.stats.reordered += 1;
                self.set_fate(seq, Fate::Late);
            }
            None => {
                self.stats.late += 1;
                self.stats.reordered += 1;
                self.set_fate(seq, Fate::Late);
            }
        }
        true
    }

    fn drop_candidate(&mut self) {
        if self.candidate.take().is_some() {
            self.stats.discarded += 1;
        }
    }

    /// A packet of the current stream with extended sequence number `seq`.
    fn accept(&mut self, seq: i64, packet: &Packet) {
        // Unwrap the timestamp against the highest packet's.
        let dt = i64::from(packet.timestamp.wrapping_sub(self.ref_raw_ts) as i32);
        let expected = self.ref_ts + FRAME_TS * (seq - self.highest);
        let mut ts = self.ref_ts + dt;
        if (ts - expected).abs() > MAX_TS_JUMP {
            ts = expected;
            if seq > self.highest {
                // The sender's clock jumped: keep the sequence timeline and
                // measure transit times afresh.
                self.stats.resyncs += 1;
                self.reset_transit();
            }
        }
        let transit = packet.arrival.saturating_sub(ts.saturating_mul(US_PER_TS));

        if seq < self.cursor {
            match self.fate(seq) {
                Some(Fate::Played | Fate::Discarded | Fate::Late) => {
                    self.stats.duplicates += 1;
                    return;
                }
                Some(Fate::Lost) => {
                    self.stats.lost = self.stats.lost.saturating_sub(1);
                    self.stats.late += 1;
                    self.stats.reordered += 1;
                    self.set_fate(seq, Fate::Late);
                    self.record_transit(transit);
                    return;
                }
                None if !self.cursor_moved && self.highest - seq < SLOTS as i64 => {
                    // Playout has not started: the earlier packet goes first.
                    self.cursor = seq;
                    self.last_ts = ts - FRAME_TS;
                }
                None => {
                    self.stats.late += 1;
                    self.stats.reordered += 1;
                    if seq >= self.cursor - FATES as i64 {
                        self.set_fate(seq, Fate::Late);
                    }
                    self.record_transit(transit);
                    return;
                }
            }
        }
        let slot = &self.slots[slot_index(seq)];
        if slot.present && slot.seq == seq {
            self.stats.duplicates += 1;
            return;
        }
        if seq >= self.cursor + SLOTS as i64 {
            // Too far ahead of playout to keep: make room.
            while seq >= self.cursor + SLOTS as i64 {
                self.pass(Fate::Discarded);
            }
        }
        if seq < self.highest {
            self.stats.reordered += 1;
        }
        self.store(seq, ts, packet);
        if seq > self.highest {
            self.highest = seq;
            self.highest_raw = packet.seq;
            self.ref_raw_ts = packet.timestamp;
            self.ref_ts = ts;
        }
        self.record_transit(transit);
    }

    fn store(&mut self, seq: i64, ts: i64, packet: &Packet) {
        let slot = &mut self.slots[slot_index(seq)];
        if !slot.present {
            self.buffered += 1;
        }
        *slot = Slot {
            present: true,
            seq,
            raw_ts: packet.timestamp,
            ts,
            arrival: packet.arrival,
            codec: packet.codec,
            marker: packet.marker,
            len: packet.len,
            data: packet.data,
        };
    }

    fn fate(&self, seq: i64) -> Option<Fate> {
        let (s, fate) = self.fates[fate_index(seq)];
        (s == seq).then_some(fate)
    }

    fn set_fate(&mut self, seq: i64, fate: Fate) {
        self.fates[fate_index(seq)] = (seq, fate);
    }

    fn reset_transit(&mut self) {
        self.transit_len = 0;
        self.transit_next = 0;
    }

    /// One packet's transit time (arrival − timestamp): updates the
    /// minimum over the window and, in adaptive mode, the delay histogram
    /// and the target.
    fn record_transit(&mut self, transit: i64) {
        self.transit[self.transit_next] = transit;
        self.transit_next = (self.transit_next + 1) % TRANSIT_WINDOW;
        self.transit_len = (self.transit_len + 1).min(TRANSIT_WINDOW);
        self.min_transit = self.transit[..self.transit_len]
            .iter()
            .copied()
            .min()
            .unwrap_or(transit);
        if self.mode == Mode::Fixed {
            self.target_us = self.nominal_us;
            return;
        }
        let relative = transit.saturating_sub(self.min_transit).max(0);
        let bucket =
            ((relative.saturating_add(FRAME_US - 1)) / FRAME_US).min(BUCKETS as i64 - 1) as usize;
        // NetEQ's start-up: the first packets weigh more, until the steady
        // forgetting factor is reached.
        let start_up = 1.0 - 2.0 / (self.histogram_count as f64 + 2.0);
        let forget = FORGET.min(start_up);
        for p in self.histogram.iter_mut() {
            *p *= forget;
        }
        self.histogram[bucket] += 1.0 - forget;
        self.histogram_count = self.histogram_count.saturating_add(1);
        let mut cumulative = 0.0;
        let mut quantile = BUCKETS - 1;
        for (k, p) in self.histogram.iter().enumerate() {
            cumulative += p;
            if cumulative >= QUANTILE {
                quantile = k;
                break;
            }
        }
        let mut target = (quantile as i64 + 1) * FRAME_US;
        if self.histogram_count < LEARN_PACKETS {
            target = target.max(self.nominal_us);
        }
        self.target_us = target.clamp(self.min_us, self.max_us);
    }
}

fn slot_index(seq: i64) -> usize {
    seq.rem_euclid(SLOTS as i64) as usize
}

fn fate_index(seq: i64) -> usize {
    seq.rem_euclid(FATES as i64) as usize
}

/// A caller's microsecond time as a signed value (times beyond 2^63 µs,
/// some 292 000 years, saturate).
fn clock(us: u64) -> i64 {
    i64::try_from(us).unwrap_or(i64::MAX)
}

fn to_ms(us: i64) -> u32 {
    u32::try_from(us.max(0) / 1_000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g711::linear_to_ulaw;
    use std::sync::OnceLock;

    const MS: u64 = 1_000;
    const SSRC: u32 = 0x5eed_0001;
    const BASE: u64 = 1_000 * MS;

    /// Frame `k` of a 425 Hz tone in µ-law (a whole number of cycles per
    /// second, so the table repeats seamlessly).
    fn tone(k: usize) -> [u8; FRAME] {
        static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
        let table = TABLE.get_or_init(|| {
            (0..8_000)
                .map(|i| {
                    let t = f64::from(i) / 8_000.0;
                    linear_to_ulaw(
                        (6_000.0 * (2.0 * std::f64::consts::PI * 425.0 * t).sin()) as i16,
                    )
                })
                .collect()
        });
        let mut out = [0u8; FRAME];
        for (i, o) in out.iter_mut().enumerate() {
            *o = table[(k * FRAME + i) % table.len()];
        }
        out
    }

    fn tone_pcm(k: usize) -> [i16; FRAME] {
        let mut pcm = [0i16; FRAME];
        Codec::Pcmu.decode(&tone(k), &mut pcm);
        pcm
    }

    #[derive(Debug, Clone, Copy)]
    struct Pkt {
        k: usize,
        seq: u16,
        ts: u32,
        ssrc: u32,
        arrival: u64,
    }

    /// Packet `k` of a stream starting at `seq0`/`ts0`, sent every 20 ms
    /// from `BASE`, arriving `extra` after its send time.
    fn pkt(k: usize, seq0: u16, ts0: u32, extra: u64) -> Pkt {
        Pkt {
            k,
            seq: seq0.wrapping_add(k as u16),
            ts: ts0.wrapping_add(160 * k as u32),
            ssrc: SSRC,
            arrival: BASE + 20 * MS * k as u64 + extra,
        }
    }

    fn push(jb: &mut JitterBuffer, p: &Pkt) {
        jb.push(
            p.seq,
            p.ts,
            p.ssrc,
            Codec::Pcmu,
            &tone(p.k),
            p.k == 0,
            p.arrival,
        );
    }

    struct Pop {
        now: u64,
        kind: FrameKind,
        played: Option<PlayedFrame>,
        pcm: [i16; FRAME],
        stats: JitterStats,
    }

    /// Pushes `pkts` in arrival order (stable for equal times), popping every
    /// 20 ms from `first_pop` to `last_pop`; a packet arriving at the time of
    /// a pop is pushed before it.
    fn drive(jb: &mut JitterBuffer, pkts: &[Pkt], first_pop: u64, last_pop: u64) -> Vec<Pop> {
        let mut order: Vec<Pkt> = pkts.to_vec();
        order.sort_by_key(|p| p.arrival);
        let mut next = 0;
        let mut pops = Vec::new();
        let mut now = first_pop;
        while now <= last_pop {
            while next < order.len() && order[next].arrival <= now {
                push(jb, &order[next]);
                next += 1;
            }
            let mut pcm = [0i16; FRAME];
            let kind = jb.pop(now, &mut pcm);
            pops.push(Pop {
                now,
                kind,
                played: jb.last_played(),
                pcm,
                stats: jb.stats().clone(),
            });
            now += 20 * MS;
        }
        pops
    }

    fn kinds(pops: &[Pop]) -> Vec<FrameKind> {
        pops.iter().map(|p| p.kind).collect()
    }

    fn played_seqs(pops: &[Pop]) -> Vec<u16> {
        pops.iter()
            .filter_map(|p| p.played.map(|f| f.seq))
            .collect()
    }

    fn adaptive() -> JitterConfig {
        JitterConfig {
            mode: Mode::Adaptive,
            ..JitterConfig::default()
        }
    }

    #[test]
    fn in_order_stream_plays_everything_at_the_nominal_delay() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let pkts: Vec<Pkt> = (0..100).map(|k| pkt(k, 1_000, 5_000, 0)).collect();
        // Ticks at 10 ms past the arrivals: frame k is due at 50 + 20k ms.
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 2_030 * MS);
        let mut want = vec![FrameKind::Silence; 2];
        want.extend([FrameKind::Audio; 100]);
        assert_eq!(kinds(&pops), want);
        assert_eq!(
            played_seqs(&pops),
            (0..100).map(|k| 1_000 + k).collect::<Vec<u16>>()
        );
        for (k, pop) in pops[2..].iter().enumerate() {
            assert_eq!(pop.pcm, tone_pcm(k));
            assert_eq!(pop.now - pop.played.map_or(0, |f| f.arrival_us), 50 * MS);
        }
        let s = jb.stats();
        assert_eq!(
            (s.received, s.played_frames, s.lost, s.late),
            (100, 100, 0, 0)
        );
        assert_eq!((s.underflows, s.concealed_frames, s.discarded), (0, 0, 0));
        assert_eq!((s.current_delay_ms, s.target_delay_ms), (50, 50));
        assert_eq!(s.delay_ms_sum, 50 * 100);
        assert_eq!((s.expanded, s.accelerated, s.resyncs), (0, 0, 0));
    }

    #[test]
    fn before_the_first_packet_pops_are_underflows() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut pcm = [1i16; FRAME];
        for i in 0..5 {
            assert_eq!(jb.pop(i * 20 * MS, &mut pcm), FrameKind::Silence);
            assert_eq!(pcm, [0; FRAME]);
        }
        assert_eq!(jb.stats().underflows, 5);
        // Waiting for the first packet to be due is not an underflow.
        jb.push(7, 0, SSRC, Codec::Pcma, &[0xD5; 160], true, 100 * MS);
        assert_eq!(jb.pop(110 * MS, &mut pcm), FrameKind::Silence);
        assert_eq!(jb.stats().underflows, 5);
        assert_eq!(jb.pop(150 * MS, &mut pcm), FrameKind::Audio);
        assert_eq!(pcm, [8; FRAME]);
        assert_eq!(jb.pop(170 * MS, &mut pcm), FrameKind::Concealed);
        assert_eq!(jb.stats().underflows, 6);
    }

    #[test]
    fn a_packet_later_than_the_delay_is_late_and_its_frame_concealed() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let pkts: Vec<Pkt> = (0..60)
            .map(|k| pkt(k, 300, 0, if k == 10 { 100 * MS } else { 0 }))
            .collect();
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 1_230 * MS);
        // Frame 10 is due at 250 ms.
        let at = pops.iter().position(|p| p.now == BASE + 250 * MS).unwrap();
        assert_eq!(pops[at].kind, FrameKind::Concealed);
        assert_eq!(pops[at].stats.lost, 1);
        assert_eq!(pops[at + 1].kind, FrameKind::Audio);
        assert_eq!(pops[at + 1].played.map(|f| f.seq), Some(311));
        let s = jb.stats();
        assert_eq!(
            (s.late, s.lost, s.played_frames, s.concealed_frames),
            (1, 0, 59, 1)
        );
        assert_eq!((s.reordered, s.duplicates, s.underflows), (1, 0, 0));
        assert_eq!(s.current_delay_ms, 50);
    }

    #[test]
    fn duplicates_are_counted_once() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut pkts: Vec<Pkt> = (0..40).map(|k| pkt(k, 9, 77, 0)).collect();
        // One duplicate while buffered, one after its frame played.
        pkts.push(pkt(5, 9, 77, MS));
        pkts.push(pkt(20, 9, 77, 300 * MS));
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 900 * MS);
        assert_eq!(
            played_seqs(&pops),
            (0..40).map(|k| 9 + k).collect::<Vec<u16>>()
        );
        let s = jb.stats();
        assert_eq!((s.received, s.duplicates, s.played_frames), (42, 2, 40));
        assert_eq!((s.late, s.lost, s.reordered), (0, 0, 0));
    }

    #[test]
    fn ssrc_change_resyncs() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut pkts: Vec<Pkt> = (0..50)
            .filter(|&k| k != 47)
            .map(|k| pkt(k, 100, 0, 0))
            .collect();
        // The new source starts 100 ms after the old one ends, with its
        // own numbering and clock.
        for k in 55..105 {
            let mut p = pkt(k, 40_000, 123_456, 0);
            p.ssrc = 0xB;
            pkts.push(p);
        }
        // Stragglers of the old source after the switch: a duplicate, and a
        // packet whose frame was already concealed.
        pkts.push(pkt(45, 100, 0, 300 * MS));
        pkts.push(pkt(47, 100, 0, 300 * MS));
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 2_200 * MS);
        let played = played_seqs(&pops);
        let mut want: Vec<u16> = (0..50).filter(|&k| k != 47).map(|k| 100 + k).collect();
        want.extend((55..105).map(|k| 40_000u16.wrapping_add(k)));
        assert_eq!(played, want);
        let exts: Vec<u64> = pops
            .iter()
            .filter_map(|p| p.played.map(|f| f.ext_seq))
            .collect();
        assert!(exts.windows(2).all(|w| w[0] < w[1]));
        let s = jb.stats();
        assert_eq!(s.resyncs, 1);
        assert_eq!(
            (s.played_frames, s.late, s.lost, s.duplicates),
            (99, 1, 0, 1)
        );
        assert_eq!(s.discarded, 0);
        assert_eq!(s.current_delay_ms, 50);
    }

    #[test]
    fn ssrc_change_flushes_what_is_buffered() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut pkts: Vec<Pkt> = (0..10).map(|k| pkt(k, 0, 0, 0)).collect();
        let mut p = pkt(10, 500, 0, 0);
        p.ssrc = 0xC;
        pkts.push(p);
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 400 * MS);
        // Frames 8 and 9 were still waiting when the new source came.
        assert_eq!(
            played_seqs(&pops),
            (0..8).chain([510]).collect::<Vec<u16>>()
        );
        let s = jb.stats();
        assert_eq!(
            (s.resyncs, s.discarded, s.lost, s.played_frames),
            (1, 2, 0, 9)
        );
    }

    #[test]
    fn switching_back_to_an_earlier_ssrc_is_a_new_stream() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut out = [0i16; FRAME];
        let mut t = BASE;
        for (ssrc, seq) in [(1u32, 10u16), (2, 500), (1, 2_000)] {
            for i in 0..5u16 {
                jb.push(
                    seq + i,
                    u32::from(seq + i) * 160,
                    ssrc,
                    Codec::Pcmu,
                    &tone(0),
                    false,
                    t,
                );
                t += 20 * MS;
                jb.pop(t, &mut out);
            }
        }
        assert_eq!(jb.stats().resyncs, 2);
        assert_eq!(jb.stats().late, 0);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let pkts: Vec<Pkt> = (0..60).map(|k| pkt(k, 0xFFF0, 1_000, 0)).collect();
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 1_300 * MS);
        let want: Vec<u16> = (0..60).map(|k| 0xFFF0u16.wrapping_add(k)).collect();
        assert_eq!(played_seqs(&pops), want);
        let exts: Vec<u64> = pops
            .iter()
            .filter_map(|p| p.played.map(|f| f.ext_seq))
            .collect();
        assert!(exts.windows(2).all(|w| w[1] == w[0] + 1));
        let s = jb.stats();
        assert_eq!((s.played_frames, s.lost, s.late, s.resyncs), (60, 0, 0, 0));
    }

    #[test]
    fn timestamps_wrap() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let ts0 = u32::MAX - 1_000;
        let pkts: Vec<Pkt> = (0..60).map(|k| pkt(k, 42, ts0, 0)).collect();
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 1_300 * MS);
        let ts: Vec<u32> = pops
            .iter()
            .filter_map(|p| p.played.map(|f| f.timestamp))
            .collect();
        assert_eq!(
            ts,
            (0..60)
                .map(|k| ts0.wrapping_add(160 * k))
                .collect::<Vec<u32>>()
        );
        let s = jb.stats();
        assert_eq!((s.played_frames, s.lost, s.late, s.resyncs), (60, 0, 0, 0));
        assert_eq!(s.delay_ms_sum, 50 * 60);
    }

    #[test]
    fn a_confirmed_sequence_jump_resyncs_and_a_stray_packet_does_not() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        // The sender renumbers at frame 50; its clock continues.
        let pkts: Vec<Pkt> = (0..100)
            .map(|k| {
                let mut p = pkt(k, 100, 0, 0);
                if k >= 50 {
                    p.seq = 30_000 + k as u16;
                }
                p
            })
            .collect();
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 2_200 * MS);
        let s = jb.stats();
        assert_eq!(s.resyncs, 1);
        // The frame still waiting when the jump is confirmed is dropped; the
        // first packet of the new numbering is kept.
        assert_eq!(
            (s.played_frames, s.discarded, s.lost, s.late),
            (99, 1, 0, 0)
        );
        assert_eq!(played_seqs(&pops).last(), Some(&(30_099)));

        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut pkts: Vec<Pkt> = (0..50).map(|k| pkt(k, 100, 0, 0)).collect();
        let mut stray = pkt(20, 100, 0, MS);
        stray.seq = 20_000;
        pkts.push(stray);
        drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 1_100 * MS);
        let s = jb.stats();
        assert_eq!(
            (s.resyncs, s.discarded, s.played_frames, s.lost),
            (0, 1, 50, 0)
        );
    }

    #[test]
    fn a_timestamp_jump_resyncs_without_losing_audio() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let pkts: Vec<Pkt> = (0..100)
            .map(|k| {
                let mut p = pkt(k, 7, 0, 0);
                if k >= 50 {
                    p.ts = p.ts.wrapping_add(2_000_000_000);
                }
                p
            })
            .collect();
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 2_030 * MS);
        assert_eq!(
            played_seqs(&pops),
            (0..100).map(|k| 7 + k).collect::<Vec<u16>>()
        );
        let s = jb.stats();
        assert_eq!(
            (s.resyncs, s.lost, s.late, s.discarded, s.concealed_frames),
            (1, 0, 0, 0, 0)
        );
        assert_eq!(s.delay_ms_sum, 50 * 100);
    }

    #[test]
    fn a_pause_in_the_stream_stays_silent_and_playout_resumes_on_time() {
        // Silence suppression: sequence numbers continue, the timestamp and
        // the arrivals skip the pause.
        for pause_frames in [50usize, 250] {
            let mut jb = JitterBuffer::new(JitterConfig::default());
            let pkts: Vec<Pkt> = (0..100)
                .map(|k| {
                    let skip = if k >= 50 { pause_frames } else { 0 };
                    let mut p = pkt(k + skip, 7, 0, 0);
                    p.seq = 7 + k as u16;
                    p
                })
                .collect();
            let end = BASE + (20 * (100 + pause_frames) as u64 + 200) * MS;
            let pops = drive(&mut jb, &pkts, BASE + 10 * MS, end);
            let s = jb.stats();
            assert_eq!(
                (s.played_frames, s.lost, s.late, s.discarded),
                (100, 0, 0, 0),
                "{pause_frames}"
            );
            // The talkspurt after the pause is played 50 ms after arrival
            // again (a 5 s pause re-anchors, a 1 s one keeps the schedule).
            assert_eq!(s.resyncs, u64::from(pause_frames > 100));
            let last = pops.iter().rev().find_map(|p| p.played).unwrap();
            let at = pops.iter().rev().find(|p| p.played.is_some()).unwrap().now;
            assert_eq!(at - last.arrival_us, 50 * MS, "{pause_frames}");
            // Silence (after 60 ms of fading concealment) during the pause.
            let silent = pops.iter().filter(|p| p.kind == FrameKind::Silence).count();
            assert!(silent + 10 >= pause_frames, "{pause_frames}: {silent}");
        }
    }

    #[test]
    fn a_long_loss_is_concealed_then_silent() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let pkts: Vec<Pkt> = (0..60)
            .filter(|k| !(20..30).contains(k))
            .map(|k| pkt(k, 0, 0, 0))
            .collect();
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 1_230 * MS);
        let gap: Vec<&Pop> = pops
            .iter()
            .filter(|p| p.now >= BASE + 450 * MS && p.now < BASE + 650 * MS)
            .collect();
        // The loss outlasts what was buffered: concealment for 60 ms, then
        // silence, until the next packet (at 600 ms) shows that the frames
        // were lost; the last two are concealed as lost in their own time
        // (silently, 60 ms are over).
        let want: Vec<FrameKind> = (0..10)
            .map(|i| {
                if !(3..8).contains(&i) {
                    FrameKind::Concealed
                } else {
                    FrameKind::Silence
                }
            })
            .collect();
        assert_eq!(gap.iter().map(|p| p.kind).collect::<Vec<_>>(), want);
        assert!(gap[0].pcm.iter().any(|&s| s != 0));
        assert!(gap[3..].iter().all(|p| p.pcm == [0; FRAME]));
        let s = jb.stats();
        assert_eq!(
            (s.lost, s.late, s.played_frames, s.concealed_frames),
            (10, 0, 50, 5)
        );
        // 450..=590 ms: due, nothing buffered.
        assert_eq!(s.underflows, 8);
        // Playout resumes on time.
        assert_eq!(s.delay_ms_sum, 50 * 50);
    }

    #[test]
    fn an_earlier_packet_arriving_before_playout_goes_first() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut pkts: Vec<Pkt> = (0..20).map(|k| pkt(k, 500, 0, 0)).collect();
        pkts[0].arrival += 10 * MS;
        pkts[1].arrival -= 15 * MS;
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 600 * MS);
        assert_eq!(
            played_seqs(&pops),
            (0..20).map(|k| 500 + k).collect::<Vec<u16>>()
        );
        let s = jb.stats();
        assert_eq!(
            (s.reordered, s.late, s.lost, s.played_frames),
            (1, 0, 0, 20)
        );
    }

    #[test]
    fn payloads_are_padded_or_truncated() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut out = [0i16; FRAME];
        jb.push(1, 0, SSRC, Codec::Pcmu, &[0x80; 80], false, 0);
        jb.push(2, 160, SSRC, Codec::Pcmu, &[], false, 20 * MS);
        jb.push(3, 320, SSRC, Codec::Pcma, &[0xAA; 400], false, 40 * MS);
        assert_eq!(jb.pop(50 * MS, &mut out), FrameKind::Audio);
        assert!(out[..80].iter().all(|&s| s == 32_124));
        assert!(out[80..].iter().all(|&s| s == 0));
        assert_eq!(jb.pop(70 * MS, &mut out), FrameKind::Audio);
        assert_eq!(out, [0; FRAME]);
        assert_eq!(jb.pop(90 * MS, &mut out), FrameKind::Audio);
        assert_eq!(out, [32_256; FRAME]);
        let s = jb.stats();
        assert_eq!((s.oversized, s.played_frames, s.received), (1, 3, 3));
    }

    #[test]
    fn fixed_mode_keeps_the_nominal_delay_under_jitter() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let pkts: Vec<Pkt> = (0..500)
            .map(|k| pkt(k, 0, 0, if k == 0 { 0 } else { rng.u64(0..40 * MS) }))
            .collect();
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 10_100 * MS);
        for p in &pops[3..] {
            // Over the fastest of the last 128 packets, which took a few
            // hundred µs more than the first.
            assert_eq!(p.stats.target_delay_ms, 50);
            assert!(
                (45..=50).contains(&p.stats.current_delay_ms),
                "{:?}",
                p.stats
            );
        }
        let s = jb.stats();
        assert_eq!(
            (s.played_frames, s.lost, s.late, s.discarded),
            (500, 0, 0, 0)
        );
        assert_eq!((s.expanded, s.accelerated), (0, 0));
    }

    #[test]
    fn adaptive_mode_follows_the_jitter_within_its_bounds() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut jb = JitterBuffer::new(adaptive());
        // 10 s of heavy jitter, then 10 s of none.
        let pkts: Vec<Pkt> = (0..1_000)
            .map(|k| {
                let jitter = if k == 0 || k >= 500 {
                    0
                } else {
                    rng.u64(0..120 * MS)
                };
                pkt(k, 0, 0, jitter)
            })
            .collect();
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 20_500 * MS);
        let at = |t: u64| &pops.iter().find(|p| p.now >= BASE + t * MS).unwrap().stats;
        let rough = at(10_000);
        assert!((100..=200).contains(&rough.target_delay_ms), "{rough:?}");
        assert!(
            rough.current_delay_ms + 20 >= rough.target_delay_ms,
            "{rough:?}"
        );
        // Late packets only while the delay was catching up.
        let late_rough = rough.late;
        assert!(late_rough < 25, "{rough:?}");
        let calm = at(20_000);
        assert!(calm.target_delay_ms <= 40, "{calm:?}");
        assert!(calm.current_delay_ms <= 60, "{calm:?}");
        let s = jb.stats();
        assert_eq!(s.played_frames + s.late + s.lost + s.discarded, 1_000);
        assert_eq!(s.lost, 0);
        assert!(pops
            .iter()
            .all(|p| (20..=200).contains(&p.stats.target_delay_ms)));
    }

    #[test]
    fn adaptive_mode_starts_at_nominal_and_settles_low_on_a_clean_stream() {
        let mut jb = JitterBuffer::new(adaptive());
        let pkts: Vec<Pkt> = (0..200).map(|k| pkt(k, 0, 0, 0)).collect();
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 4_050 * MS);
        // One second of evidence before going below the nominal delay.
        assert!(pops.iter().take(45).all(|p| p.stats.target_delay_ms == 50));
        let s = jb.stats();
        assert_eq!(s.target_delay_ms, 20);
        assert!(s.current_delay_ms <= 30, "{s:?}");
        assert_eq!((s.lost, s.late), (0, 0));
        assert_eq!(s.played_frames + s.discarded, 200);
    }

    #[test]
    fn a_drifting_sender_clock_is_corrected() {
        // 0.5 % fast, then 0.5 % slow: 15 frames of drift a minute.
        for period_us in [19_900u64, 20_100] {
            let mut jb = JitterBuffer::new(JitterConfig::default());
            let n = 3_000;
            let pkts: Vec<Pkt> = (0..n)
                .map(|k| {
                    let mut p = pkt(k, 0, 0, 0);
                    p.arrival = BASE + period_us * k as u64;
                    p
                })
                .collect();
            let end = BASE + period_us * n as u64 + 200 * MS;
            let pops = drive(&mut jb, &pkts, BASE + 10 * MS, end);
            for p in &pops[3..pops.len() - 12] {
                let d = p.stats.current_delay_ms;
                assert!((10..=90).contains(&d), "{period_us}: {d} ms at {}", p.now);
            }
            let s = jb.stats();
            assert_eq!((s.lost, s.late), (0, 0), "{period_us}");
            assert_eq!(s.played_frames + s.discarded, n as u64);
            if period_us < 20_000 {
                assert!(s.accelerated >= 12 && s.expanded <= 1, "{s:?}");
            } else {
                assert!(s.expanded >= 12 && s.accelerated <= 1, "{s:?}");
            }
        }
    }

    #[test]
    fn a_stalled_playout_clock_catches_up() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let pkts: Vec<Pkt> = (0..150).map(|k| pkt(k, 0, 0, 0)).collect();
        let mut pops = drive(&mut jb, &pkts[..20], BASE + 10 * MS, BASE + 390 * MS);
        // No pop for 200 ms (the caller's task was held up).
        pops.extend(drive(
            &mut jb,
            &pkts[20..],
            BASE + 610 * MS,
            BASE + 3_400 * MS,
        ));
        let s = jb.stats();
        assert_eq!((s.lost, s.late), (0, 0));
        assert_eq!(s.played_frames + s.discarded, 150);
        assert_eq!(s.discarded, s.accelerated);
        assert!((9..=11).contains(&s.accelerated), "{s:?}");
        assert_eq!(pops.last().unwrap().stats.current_delay_ms, 50);
    }

    /// The reference: what a stream's counters must be, from the generator's
    /// own bookkeeping.
    #[derive(Default)]
    struct Model {
        pushed: Vec<bool>,
        duplicates: u64,
        reordered: u64,
        highest: Option<usize>,
    }

    impl Model {
        fn push(&mut self, k: usize) {
            if self.pushed[k] {
                self.duplicates += 1;
                return;
            }
            self.pushed[k] = true;
            if self.highest.is_some_and(|h| k < h) {
                self.reordered += 1;
            }
            self.highest = self.highest.max(Some(k));
        }
    }

    /// One random stream through the buffer, with every invariant checked.
    fn property_run(seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = rng.usize(30..250);
        // Force the wraps in some seeds.
        let seq0 = if seed % 4 == 0 {
            0xFFFF - rng.u16(0..40)
        } else {
            rng.u16(..)
        };
        let ts0 = if seed % 4 == 1 {
            u32::MAX - rng.u32(0..160 * 40)
        } else {
            rng.u32(..)
        };
        let mode = if rng.bool() {
            Mode::Fixed
        } else {
            Mode::Adaptive
        };
        let jitter_max = [0, 5, 30, 80, 250][rng.usize(0..5)] * MS;
        let loss = [0.0, 0.02, 0.1, 0.3][rng.usize(0..4)];
        let dup = [0.0, 0.05, 0.2][rng.usize(0..3)];
        let spikes = rng.bool();
        let base = BASE + rng.u64(0..20 * MS);

        let mut pkts = Vec::new();
        for k in 0..n {
            // The first packet arrives first and is never lost, so the
            // stream's range starts at it.
            if k > 0 && rng.f64() < loss {
                continue;
            }
            let mut jitter = if k == 0 || jitter_max == 0 {
                0
            } else {
                rng.u64(0..jitter_max)
            };
            if k > 0 && spikes && rng.u8(0..50) == 0 {
                jitter += rng.u64(100 * MS..600 * MS);
            }
            let mut p = pkt(k, seq0, ts0, 5 * MS + jitter);
            p.arrival += base - BASE;
            pkts.push(p);
            if k > 0 && rng.f64() < dup {
                p.arrival += rng.u64(0..60 * MS);
                pkts.push(p);
            }
        }
        pkts.sort_by_key(|p| p.arrival);
        let mut model = Model {
            pushed: vec![false; n],
            ..Model::default()
        };
        for p in &pkts {
            model.push(p.k);
        }

        let cfg = JitterConfig {
            mode,
            ..JitterConfig::default()
        };
        let mut jb = JitterBuffer::new(cfg);
        let phase = rng.u64(0..20 * MS);
        let last_arrival = pkts.last().map_or(base, |p| p.arrival);
        let pops = drive(
            &mut jb,
            &pkts,
            base - 100 * MS + phase,
            last_arrival + 2_000 * MS,
        );

        let mut prev: Option<PlayedFrame> = None;
        let mut audio = 0;
        for pop in &pops {
            match (pop.kind, pop.played) {
                (FrameKind::Audio, Some(f)) => {
                    audio += 1;
                    let k = usize::from(f.seq.wrapping_sub(seq0));
                    assert!(
                        k < n && model.pushed[k],
                        "seed {seed}: played unknown {f:?}"
                    );
                    assert_eq!(f.timestamp, ts0.wrapping_add(160 * k as u32), "seed {seed}");
                    assert!(
                        f.arrival_us <= pop.now,
                        "seed {seed}: played before arrival"
                    );
                    if let Some(p) = prev {
                        assert!(f.ext_seq > p.ext_seq, "seed {seed}: {p:?} then {f:?}");
                        assert!(
                            f.timestamp.wrapping_sub(p.timestamp) as i32 > 0,
                            "seed {seed}"
                        );
                    }
                    // Only the merge after a concealment may change the start.
                    assert_eq!(pop.pcm[80..], tone_pcm(k)[80..], "seed {seed}");
                    prev = Some(f);
                }
                (FrameKind::Audio, None) => panic!("seed {seed}: audio without a frame"),
                (_, played) => assert!(played.is_none(), "seed {seed}"),
            }
            assert!((20..=200).contains(&pop.stats.target_delay_ms));
        }

        let s = jb.stats();
        let distinct = model.pushed.iter().filter(|&&p| p).count() as u64;
        let highest = model.highest.unwrap_or(0) as u64;
        let ctx = format!(
            "seed {seed}: n {n} mode {mode:?} jitter {jitter_max} loss {loss} dup {dup}: {s:?}"
        );
        assert_eq!(s.received, pkts.len() as u64, "{ctx}");
        assert_eq!(s.received, distinct + s.duplicates, "{ctx}");
        assert_eq!(s.duplicates, model.duplicates, "{ctx}");
        assert_eq!(s.reordered, model.reordered, "{ctx}");
        assert_eq!(s.played_frames, audio, "{ctx}");
        assert_eq!(s.played_frames + s.late + s.discarded, distinct, "{ctx}");
        assert_eq!(s.lost, highest + 1 - distinct, "{ctx}");
        // An accelerate drops a frame that is there, or skips a lost one.
        assert!(s.discarded <= s.accelerated, "{ctx}");
        assert_eq!((s.resyncs, s.oversized), (0, 0), "{ctx}");
        if jitter_max == 0 && !spikes && loss == 0.0 {
            assert_eq!(
                (s.late, s.lost, s.concealed_frames.min(3)),
                (0, 0, s.concealed_frames),
                "{ctx}"
            );
        }
    }

    #[test]
    fn random_streams_keep_every_invariant() {
        for seed in 0..500 {
            property_run(seed);
        }
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(1_000 + seed);
            let mut jb = JitterBuffer::new(JitterConfig {
                mode: if rng.bool() {
                    Mode::Fixed
                } else {
                    Mode::Adaptive
                },
                nominal_ms: rng.u32(..),
                min_ms: rng.u32(..),
                max_ms: rng.u32(0..3_000),
            });
            let payload: Vec<u8> = (0..2_000).map(|_| rng.u8(..)).collect();
            let mut out = [0i16; FRAME];
            let mut now = rng.u64(..);
            let (mut seq, mut ts) = (rng.u16(..), rng.u32(..));
            let mut pushes = 0;
            for _ in 0..1_000 {
                match rng.u8(0..10) {
                    0..=4 => {
                        // Mostly near the previous packet, sometimes anywhere.
                        if rng.u8(0..8) == 0 {
                            seq = rng.u16(..);
                            ts = rng.u32(..);
                        } else {
                            seq = seq.wrapping_add(rng.u16(0..5)).wrapping_sub(2);
                            ts = ts.wrapping_add(rng.u32(0..400)).wrapping_sub(80);
                        }
                        let ssrc = rng.u32(0..3);
                        let codec = if rng.bool() { Codec::Pcmu } else { Codec::Pcma };
                        let len = rng.usize(0..payload.len());
                        let arrival = if rng.u8(0..20) == 0 {
                            rng.u64(..)
                        } else {
                            now.wrapping_add(rng.u64(0..100_000))
                        };
                        jb.push(seq, ts, ssrc, codec, &payload[..len], rng.bool(), arrival);
                        pushes += 1;
                    }
                    _ => {
                        now = if rng.u8(0..30) == 0 {
                            rng.u64(..)
                        } else {
                            now.wrapping_add(20_000)
                        };
                        jb.pop(now, &mut out);
                    }
                }
            }
            assert_eq!(jb.stats().received, pushes);
        }
    }

    #[test]
    fn config_from_lookup() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            JitterConfig::from_lookup(env(&[])),
            Ok(JitterConfig::default())
        );
        assert_eq!(
            JitterConfig::from_lookup(env(&[
                (VAR_MS, "80"),
                (VAR_MODE, " Adaptive "),
                (VAR_MIN, "40"),
                (VAR_MAX, "300"),
            ])),
            Ok(JitterConfig {
                mode: Mode::Adaptive,
                nominal_ms: 80,
                min_ms: 40,
                max_ms: 300,
            })
        );
        // Fixed mode ignores the adaptive bounds.
        assert_eq!(
            JitterConfig::from_lookup(env(&[(VAR_MS, "500"), (VAR_MODE, "fixed")]))
                .map(|c| c.nominal_ms),
            Ok(500)
        );
        assert_eq!(
            JitterConfig::from_lookup(env(&[(VAR_MS, "")])),
            Ok(JitterConfig::default())
        );
        let cases: [(&[(&str, &str)], &str); 7] = [
            (&[(VAR_MS, "10")], VAR_MS),
            (&[(VAR_MS, "1001")], VAR_MS),
            (&[(VAR_MS, "fifty")], VAR_MS),
            (&[(VAR_MODE, "elastic")], VAR_MODE),
            (&[(VAR_MIN, "-5")], VAR_MIN),
            (&[(VAR_MIN, "300")], VAR_MIN),
            (&[(VAR_MODE, "adaptive"), (VAR_MS, "500")], VAR_MS),
        ];
        for (pairs, var) in cases {
            let get = |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            };
            let err = JitterConfig::from_lookup(get).unwrap_err();
            assert!(err.starts_with(&format!("{var}: ")), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert_eq!(
            JitterConfig::from_lookup(env(&[(VAR_MS, "5")])).unwrap_err(),
            "DIALSTACK_JITTER_BUFFER_MS: must be 20-1000 (milliseconds), got \"5\""
        );
    }
}
