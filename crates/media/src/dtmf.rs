//! DTMF keys (ITU-T Q.23) both ways: in band, as the sum of a row and a
//! column sine in the audio, and out of band, as RFC 4733 telephone events.
//!
//! ```text
//!            1209 Hz  1336 Hz  1477 Hz  1633 Hz
//!   697 Hz     1        2        3        A
//!   770 Hz     4        5        6        B
//!   852 Hz     7        8        9        C
//!   941 Hz     *        0        #        D
//! ```
//!
//! # Layout
//! - [`DtmfDetector`] (`detector`): the in-band receiver, Goertzel filters
//!   with the ITU-T Q.24 checks (level, twist, relative peaks, talk-off,
//!   duration)
//! - [`TelephoneEvent`], [`EventReceiver`], [`EventSender`] (`rfc4733`):
//!   the telephone-event payload, key presses out of a packet stream, the
//!   packets of one key press
//! - this file: the key tables, [`event_of`] / [`digit_of`] and the tone
//!   generator ([`tone`], [`tones`])
//!
//! Keys are the characters `0`-`9`, `*`, `#` and `A`-`D`; the letters are
//! accepted in either case and always come out upper case.

mod detector;
mod rfc4733;
#[cfg(test)]
pub(crate) mod testsig;

pub use detector::DtmfDetector;
pub use rfc4733::{EventReceiver, EventSender, TelephoneEvent};

/// Sample rate of all audio here.
const SAMPLE_RATE: f64 = 8_000.0;

/// The low group (rows of the keypad), Hz.
pub const ROW_HZ: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
/// The high group (columns of the keypad), Hz.
pub const COL_HZ: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];

/// The keypad, `KEYS[row][column]`.
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// Row and column of a key (letters in either case).
fn position(digit: char) -> Option<(usize, usize)> {
    let digit = digit.to_ascii_uppercase();
    KEYS.iter()
        .enumerate()
        .find_map(|(row, keys)| keys.iter().position(|&k| k == digit).map(|col| (row, col)))
}

/// The key at a row and column of the keypad (both `0..4`).
fn key_at(row: usize, col: usize) -> char {
    KEYS[row & 3][col & 3]
}

/// Event code (0-15) of a key: `'0'`-`'9'` → 0-9, `'*'` → 10, `'#'` → 11,
/// `'A'`-`'D'` → 12-15 (case-insensitive); `None` for anything else.
pub fn event_of(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        d @ '0'..='9' => Some(d as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        d @ 'A'..='D' => Some(d as u8 - b'A' + 12),
        _ => None,
    }
}

/// The key of an event code, the inverse of [`event_of`]; `None` above 15
/// (flash and the other non-DTMF events of RFC 4734).
pub fn digit_of(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// Synthesizes a DTMF key (row and column sines, each at `amplitude` peak,
/// both starting at phase 0) for `ms` milliseconds. An unknown key gives
/// an empty vector. The sum saturates at the i16 range, so amplitudes
/// above 16 383 clip.
pub fn tone(digit: char, ms: u32, amplitude: i16) -> Vec<i16> {
    let Some((row, col)) = position(digit) else {
        return Vec::new();
    };
    let n = samples_of(ms);
    let a = f64::from(amplitude);
    let (wr, wc) = (
        std::f64::consts::TAU * ROW_HZ[row] / SAMPLE_RATE,
        std::f64::consts::TAU * COL_HZ[col] / SAMPLE_RATE,
    );
    (0..n)
        .map(|i| {
            let t = i as f64;
            let v = a * ((wr * t).sin() + (wc * t).sin());
            v.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
        })
        .collect()
}

/// A sequence of keys, each `on_ms` of [`tone`] followed by `off_ms` of
/// silence. Characters that are not keys are skipped (no tone, no pause).
pub fn tones(digits: &str, on_ms: u32, off_ms: u32, amplitude: i16) -> Vec<i16> {
    let mut out = Vec::new();
    for digit in digits.chars().filter(|&d| position(d).is_some()) {
        out.extend(tone(digit, on_ms, amplitude));
        out.resize(out.len() + samples_of(off_ms), 0);
    }
    out
}

/// Samples in `ms` milliseconds at 8 kHz.
fn samples_of(ms: u32) -> usize {
    usize::try_from(u64::from(ms) * 8).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &str = "0123456789*#ABCD";

    #[test]
    fn event_codes_round_trip() {
        for (code, digit) in ALL.chars().enumerate() {
            let expected = u8::try_from(code).ok();
            assert_eq!(event_of(digit), expected, "{digit}");
            assert_eq!(digit_of(code as u8), Some(digit));
        }
        assert_eq!(event_of('a'), Some(12));
        assert_eq!(event_of('d'), Some(15));
        for bad in ['E', 'e', ' ', ',', 'p', 'w', '+', 'é'] {
            assert_eq!(event_of(bad), None, "{bad:?}");
        }
        for code in 16..=255u8 {
            assert_eq!(digit_of(code), None);
        }
    }

    #[test]
    fn keypad_positions() {
        assert_eq!(position('1'), Some((0, 0)));
        assert_eq!(position('0'), Some((3, 1)));
        assert_eq!(position('#'), Some((3, 2)));
        assert_eq!(position('c'), Some((2, 3)));
        assert_eq!(position('x'), None);
        for d in ALL.chars() {
            let (r, c) = position(d).expect("a key");
            assert_eq!(key_at(r, c), d);
        }
    }

    #[test]
    fn tone_length_level_and_unknown_keys() {
        let t = tone('5', 100, 8_000);
        assert_eq!(t.len(), 800);
        assert_eq!(t[0], 0);
        let peak = t.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!((14_000..=16_000).contains(&peak), "peak {peak}");
        assert!(tone('x', 100, 8_000).is_empty());
        assert!(tone('1', 0, 8_000).is_empty());
        // Clipping instead of wrapping.
        let loud = tone('D', 20, i16::MAX);
        assert!(loud.contains(&i16::MAX) && loud.contains(&i16::MIN));
    }

    #[test]
    fn tones_concatenates_and_skips_unknown() {
        let t = tones("1,2", 50, 30, 5_000);
        assert_eq!(t.len(), 2 * (400 + 240));
        assert!(t[400..640].iter().all(|&s| s == 0));
        assert_eq!(&t[..400], &tone('1', 50, 5_000)[..]);
        assert!(tones("", 50, 50, 5_000).is_empty());
    }
}
