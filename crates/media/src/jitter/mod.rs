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

mod config;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use config::{JitterConfig, Mode};

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
