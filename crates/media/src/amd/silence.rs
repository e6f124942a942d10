//! Frame level and the wait for silence.

/// RMS of a frame (0 for an empty one), 16-bit units.
pub(super) fn frame_rms(frame: &[i16]) -> u16 {
    if frame.is_empty() {
        return 0;
    }
    let energy: u64 = frame
        .iter()
        .map(|&s| u64::from(s.unsigned_abs()).pow(2))
        .sum();
    let mean = energy as f64 / frame.len() as f64;
    // At most 32 768, which fits.
    mean.sqrt().round().min(f64::from(u16::MAX)) as u16
}

/// Voice activity after the greeting: true once `ms` of continuous silence
/// (frames whose RMS is below `threshold`) has passed, and for as long as
/// the silence goes on; a louder frame starts the count again. Used to
/// wait for the end of a machine's greeting when no beep comes; build it
/// with [`super::AmdDetector::silence_threshold`] to judge silence as the
/// detector did.
#[derive(Debug, Clone)]
pub struct SilenceWaiter {
    /// Silence needed, samples.
    need: u64,
    /// Frame RMS below this is silence.
    threshold: u16,
    /// Current run of silence, samples.
    run: u64,
}

impl SilenceWaiter {
    /// A waiter for `ms` of silence below `threshold` (frame RMS).
    pub fn new(ms: u32, threshold: u16) -> Self {
        Self {
            need: u64::from(ms) * 8,
            threshold,
            run: 0,
        }
    }

    /// Feeds one frame; true while the silence has lasted long enough.
    pub fn push(&mut self, frame: &[i16]) -> bool {
        if frame_rms(frame) < self.threshold {
            self.run = self.run.saturating_add(frame.len() as u64);
        } else {
            self.run = 0;
        }
        self.run >= self.need
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtmf::testsig::{silence, sine};

    #[test]
    fn rms_of_frames() {
        assert_eq!(frame_rms(&[]), 0);
        assert_eq!(frame_rms(&[0; 160]), 0);
        assert_eq!(frame_rms(&[-300; 160]), 300);
        assert_eq!(frame_rms(&[i16::MIN; 160]), 32_768);
        let s = frame_rms(&sine(1_000.0, 20, 10_000.0));
        assert!((7_060..=7_080).contains(&s), "{s}");
    }

    #[test]
    fn waits_for_continuous_silence() {
        let mut w = SilenceWaiter::new(500, 256);
        let loud = sine(400.0, 20, 5_000.0);
        let quiet = sine(400.0, 20, 200.0);
        for _ in 0..10 {
            assert!(!w.push(&loud));
        }
        // 480 ms of quiet, a loud frame, then 500 ms of quiet.
        for _ in 0..24 {
            assert!(!w.push(&quiet));
        }
        assert!(!w.push(&loud));
        for _ in 0..24 {
            assert!(!w.push(&silence(20)));
        }
        assert!(w.push(&silence(20)));
        assert!(w.push(&quiet));
        assert!(!w.push(&loud));
        // Zero means at once.
        assert!(SilenceWaiter::new(0, 256).push(&silence(20)));
    }
}
