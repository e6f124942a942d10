//! The in-band DTMF receiver: Goertzel filters at the eight frequencies
//! and the checks of ITU-T Q.24 (and the Bellcore receiver requirements it
//! shares most numbers with), written for 8 kHz G.711 audio.
//!
//! # Analysis windows
//! The signal is analysed in windows of 160 samples (20 ms) every 80
//! samples (10 ms). 20 ms is the shortest window that still separates the
//! closest pair of frequencies (697/770 Hz, 73 Hz apart): with the Hann
//! window applied before the filters, a tone leaks −14 dB into the next
//! row filter, while a tone 1.5 % off its nominal frequency (the tolerance
//! a receiver must accept) still loses at most 1.4 dB in its own. Shorter
//! windows (102 samples, 78 Hz resolution) cannot do both.
//!
//! A window counts as a *hit* for a key when:
//! - **level**: the two tones together reach −30 dBm0;
//! - **twist**: the column (high) tone is at most 4 dB above the row (low)
//!   tone (normal twist) and at most 8 dB below it (reverse twist);
//! - **relative peaks**: each of the two is 6 dB above every other filter
//!   of its group;
//! - **talk-off**: the two tones carry 80 % of the window's energy, which
//!   speech and music (many harmonics, noise) do not;
//! - **steadiness**: each quarter of the window (5 ms) has at least 40 % of
//!   the energy of the loudest quarter, so the tone fills at least about
//!   17 ms of the window.
//!
//! # Timing
//! A key is recognised after hits in 2 consecutive windows: the tone then
//! spans at least about 25 ms, and any tone of 40 ms contains two whole
//! windows, so 40 ms is always detected and 23 ms never (Q.24's limits).
//! It is reported once; it may be reported again after 4 consecutive
//! windows without it (a pause of about 25 ms or more; Q.24 requires that
//! 40 ms pauses be recognised), so that a drop-out of 10-15 ms inside a
//! tone does not turn into a second key. Another key is reported as soon
//! as it is recognised.
//!
//! The detector costs about 10 multiplications per sample and per filter
//! pass; windows below the level threshold skip the filters.
//!
//! Not met: Q.24's rejection of tones 3.5 % off frequency in the low
//! group (24 Hz at 697 Hz) would need a window of 40 ms or more, which
//! would in turn miss 40 ms keys; such tones are accepted.

use std::collections::VecDeque;

use super::{key_at, COL_HZ, ROW_HZ, SAMPLE_RATE};

/// Samples per analysis window (20 ms).
const WINDOW: usize = 160;
/// Samples between analyses (10 ms).
const HOP: usize = 80;
/// Samples per quarter of a window, for the steadiness check.
const QUARTER: usize = WINDOW / 4;

/// Mean power of a 0 dBm0 sine in 16-bit units: the G.711 digital
/// milliwatt peaks at about 22 600.
const DBM0_POWER: f32 = 22_600.0 * 22_600.0 / 2.0;
/// Smallest power of the two tones together: −30 dBm0.
const MIN_POWER: f32 = DBM0_POWER / 1_000.0;
/// Column over row power, at most: +4 dB.
const MAX_NORMAL_TWIST: f32 = 2.512;
/// Column over row power, at least: −8 dB.
const MIN_REVERSE_TWIST: f32 = 0.158;
/// Power of the strongest filter of a group over each other one: 6 dB.
const RELATIVE_PEAK: f32 = 3.98;
/// Share of the window's power the two tones must carry.
const TONE_SHARE: f32 = 0.80;
/// Energy of the weakest quarter relative to the strongest, at least.
const STEADINESS: f32 = 0.40;
/// Consecutive hits that recognise a key.
const MIN_HITS: u32 = 2;
/// Consecutive windows without the key that end it.
const RELEASE_MISSES: u32 = 4;

/// In-band DTMF detector (Goertzel), streaming: audio of any length goes
/// in, each key press comes out once, when it is recognised.
///
/// Analysis happens at fixed sample positions (every 80 samples from the
/// first), so the keys found do not depend on how the audio is sliced.
#[derive(Clone)]
pub struct DtmfDetector {
    /// The last [`WINDOW`] samples, a ring written at `pos`.
    ring: [i16; WINDOW],
    /// Next write position in `ring` (also its oldest sample).
    pos: usize,
    /// Samples pushed so far, saturating at [`WINDOW`].
    filled: usize,
    /// Samples pushed since the last analysis point.
    since_hop: usize,
    /// Goertzel coefficients `2 cos(ω)`, rows then columns.
    coeffs: [f32; 8],
    /// The Hann window.
    window: [f32; WINDOW],
    /// Σw²: turns windowed energy into mean power.
    window_energy: f32,
    /// 2 / (Σw)²: turns a filter's squared magnitude into the mean power
    /// of the sine at its frequency.
    filter_gain: f32,
    /// The key of the current run of consecutive hits.
    candidate: Option<char>,
    /// Length of that run.
    run: u32,
    /// The key reported last, until it has ended.
    latched: Option<char>,
    /// Consecutive windows without the latched key.
    misses: u32,
    /// Keys recognised but not yet returned.
    queue: VecDeque<char>,
}

impl Default for DtmfDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl DtmfDetector {
    /// A detector that has heard nothing yet.
    pub fn new() -> Self {
        let mut coeffs = [0.0; 8];
        for (c, f) in coeffs.iter_mut().zip(ROW_HZ.iter().chain(&COL_HZ)) {
            *c = (2.0 * (std::f64::consts::TAU * f / SAMPLE_RATE).cos()) as f32;
        }
        let mut window = [0.0; WINDOW];
        for (i, w) in window.iter_mut().enumerate() {
            let phase = std::f64::consts::TAU * (i as f64 + 0.5) / WINDOW as f64;
            *w = (0.5 - 0.5 * phase.cos()) as f32;
        }
        let sum: f32 = window.iter().sum();
        Self {
            ring: [0; WINDOW],
            pos: 0,
            filled: 0,
            since_hop: 0,
            coeffs,
            window,
            window_energy: window.iter().map(|w| w * w).sum(),
            filter_gain: 2.0 / (sum * sum),
            candidate: None,
            run: 0,
            latched: None,
            misses: 0,
            queue: VecDeque::new(),
        }
    }

    /// Feeds audio (any length, usually one 160-sample frame); returns the
    /// next key recognised. When one slice completes several keys, the
    /// first is returned and the others wait for [`Self::next_digit`] (or
    /// the next pushes), in order.
    pub fn push(&mut self, pcm: &[i16]) -> Option<char> {
        for &s in pcm {
            self.ring[self.pos] = s;
            self.pos = (self.pos + 1) % WINDOW;
            self.filled = (self.filled + 1).min(WINDOW);
            self.since_hop += 1;
            if self.since_hop == HOP {
                self.since_hop = 0;
                if self.filled == WINDOW {
                    let hit = self.classify();
                    self.on_window(hit);
                }
            }
        }
        self.queue.pop_front()
    }

    /// The next key recognised but not yet returned, if any.
    pub fn next_digit(&mut self) -> Option<char> {
        self.queue.pop_front()
    }

    /// The key the current window is a hit for, if any.
    fn classify(&self) -> Option<char> {
        let mut quarters = [0.0f32; 4];
        let mut x = [0.0f32; WINDOW];
        let mut windowed = 0.0f32;
        for (i, v) in x.iter_mut().enumerate() {
            let s = f32::from(self.ring[(self.pos + i) % WINDOW]);
            quarters[i / QUARTER] += s * s;
            *v = s * self.window[i];
            windowed += *v * *v;
        }
        let total = windowed / self.window_energy;
        if total < MIN_POWER {
            return None;
        }

        let mut power = [0.0f32; 8];
        for (p, &c) in power.iter_mut().zip(&self.coeffs) {
            let (mut s1, mut s2) = (0.0f32, 0.0f32);
            for &v in &x {
                let s0 = v + c * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            *p = (s1 * s1 + s2 * s2 - c * s1 * s2) * self.filter_gain;
        }
        let (rows, cols) = power.split_at(4);
        let row = strongest(rows)?;
        let col = strongest(cols)?;
        let (pr, pc) = (rows[row], cols[col]);

        let level = pr + pc >= MIN_POWER;
        let twist = pc <= pr * MAX_NORMAL_TWIST && pc >= pr * MIN_REVERSE_TWIST;
        let share = pr + pc >= TONE_SHARE * total;
        let (qmin, qmax) = quarters
            .iter()
            .fold((f32::MAX, 0.0f32), |(lo, hi), &q| (lo.min(q), hi.max(q)));
        let steady = qmin >= STEADINESS * qmax;
        (level && twist && share && steady).then(|| key_at(row, col))
    }

    /// Advances the key state machine by one analysed window.
    fn on_window(&mut self, hit: Option<char>) {
        if hit.is_some() && hit == self.candidate {
            self.run = self.run.saturating_add(1);
        } else {
            self.candidate = hit;
            self.run = 1;
        }
        if hit.is_some() && hit == self.latched {
            self.misses = 0;
        } else {
            self.misses = self.misses.saturating_add(1);
            if self.misses >= RELEASE_MISSES {
                self.latched = None;
            }
        }
        if let Some(key) = hit {
            if self.run >= MIN_HITS && self.latched != Some(key) {
                self.queue.push_back(key);
                self.latched = Some(key);
                self.misses = 0;
            }
        }
    }
}

/// Index of the strongest filter of a group when it is [`RELATIVE_PEAK`]
/// above all the others.
fn strongest(group: &[f32]) -> Option<usize> {
    let (best, &peak) = group.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
    group
        .iter()
        .enumerate()
        .all(|(i, &p)| i == best || peak >= RELATIVE_PEAK * p)
        .then_some(best)
}

#[cfg(test)]
mod tests;
