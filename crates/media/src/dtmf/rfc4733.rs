//! RFC 4733 telephone events: the 4-byte payload, key presses out of a
//! packet stream, and the packets of one outgoing key press.
//!
//! The payload (§2.3):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     event     |E|R| volume    |          duration             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! All packets of one event carry the RTP timestamp of its start; the
//! duration (in timestamp units, 8 kHz) grows with each update.

use std::collections::VecDeque;

use super::{digit_of, event_of};

/// One telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code: 0-15 are the DTMF keys (see [`super::digit_of`]).
    pub event: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// Power level of the tone, in −dBm0 (0-63, 6 bits).
    pub volume: u8,
    /// Duration so far, in RTP timestamp units (1/8000 s).
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the first 4 bytes of a payload; `None` when it is shorter.
    /// Further bytes (RFC 2198 redundancy or several events in a row) are
    /// ignored, and so is the reserved R bit.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let &[event, flags, d0, d1, ..] = payload else {
            return None;
        };
        Some(Self {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    /// The 4-byte payload (R bit clear; `volume` masked to its 6 bits).
    pub fn write(&self) -> [u8; 4] {
        let [d0, d1] = self.duration.to_be_bytes();
        let flags = if self.end { 0x80 } else { 0 } | (self.volume & 0x3F);
        [self.event, flags, d0, d1]
    }
}

/// How many recent event timestamps [`EventReceiver`] remembers: enough
/// for any reordering a jitter buffer lets through.
const REMEMBERED: usize = 32;

/// Turns a stream of telephone-event packets into key presses: each event
/// (identified by its RTP timestamp) is reported once, on the first of its
/// packets that arrives, whatever the retransmissions of its end packet or
/// reordering; a new timestamp is a new key press even for the same digit.
///
/// The last 32 timestamps are remembered, so only a packet that arrives
/// after 32 newer key presses could be reported twice. Events that are not
/// keys (16 and up) are remembered but not reported. A key held past the
/// 16-bit duration (about 8 s) is continued by the sender under a new
/// timestamp (RFC 4733 §2.5.1.3) and therefore reported again.
#[derive(Debug, Clone, Default)]
pub struct EventReceiver {
    /// Timestamps of the most recent events, oldest first.
    seen: VecDeque<u32>,
}

impl EventReceiver {
    /// A receiver that has seen no event.
    pub fn new() -> Self {
        Self::default()
    }

    /// One received packet (its RTP timestamp and payload); the key when
    /// this packet is the first seen of its event.
    pub fn on_packet(&mut self, rtp_timestamp: u32, ev: &TelephoneEvent) -> Option<char> {
        if self.seen.contains(&rtp_timestamp) {
            return None;
        }
        if self.seen.len() == REMEMBERED {
            self.seen.pop_front();
        }
        self.seen.push_back(rtp_timestamp);
        digit_of(ev.event)
    }
}

/// Volume of the events sent, −dBm0.
const SEND_VOLUME: u8 = 10;
/// Shortest key press sent, ms.
const MIN_PRESS_MS: u32 = 40;
/// Duration units per packet (20 ms at 8 kHz).
const STEP: u16 = 160;
/// Longest duration that fits the 16-bit field in whole packets (8.18 s).
const MAX_DURATION: u16 = u16::MAX / STEP * STEP;
/// Copies of the end packet (RFC 4733 §2.5.1.4 recommends three).
const END_COPIES: u8 = 3;

/// The packets of one outgoing key press (RFC 4733 §2.5): one per 20 ms
/// while the key is held (`duration` growing by 160 each), the marker bit
/// on the first, then the end packet sent 3 times with the final duration.
///
/// The caller sends every packet with the RTP timestamp of the press's
/// start, one per packet interval, and the next audio packet after the
/// last one with a timestamp past the event's end.
#[derive(Debug, Clone)]
pub struct EventSender {
    /// Event code of the key.
    event: u8,
    /// Duration of the whole press, a multiple of [`STEP`].
    total: u16,
    /// Duration carried by the last running packet sent (0 before the first).
    sent: u16,
    /// End packets sent so far.
    ends_sent: u8,
}

impl EventSender {
    /// A key press of `ms` milliseconds (at least 40, rounded up to whole
    /// 20 ms packets, at most 8.18 s) at volume 10 (−10 dBm0); `None` for
    /// an unknown key.
    pub fn new(digit: char, ms: u32) -> Option<Self> {
        let event = event_of(digit)?;
        let packets = ms.max(MIN_PRESS_MS).div_ceil(20);
        let total = u16::try_from(packets.saturating_mul(u32::from(STEP)))
            .unwrap_or(MAX_DURATION)
            .min(MAX_DURATION);
        Some(Self {
            event,
            total,
            sent: 0,
            ends_sent: 0,
        })
    }

    /// The next packet's payload and whether it carries the marker bit;
    /// `None` when the press is complete.
    pub fn next_packet(&mut self) -> Option<([u8; 4], bool)> {
        let (end, marker) = if self.sent < self.total {
            let marker = self.sent == 0;
            self.sent += STEP;
            (false, marker)
        } else if self.ends_sent < END_COPIES {
            self.ends_sent += 1;
            (true, false)
        } else {
            return None;
        };
        let ev = TelephoneEvent {
            event: self.event,
            end,
            volume: SEND_VOLUME,
            duration: self.sent,
        };
        Some((ev.write(), marker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_write_round_trip() {
        let ev = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 0x1234,
        };
        let bytes = ev.write();
        assert_eq!(bytes, [11, 0x8A, 0x12, 0x34]);
        assert_eq!(TelephoneEvent::parse(&bytes), Some(ev));
        for event in [0u8, 9, 15, 16, 255] {
            for end in [false, true] {
                for volume in [0u8, 1, 36, 63] {
                    for duration in [0u16, 160, 65_535] {
                        let ev = TelephoneEvent {
                            event,
                            end,
                            volume,
                            duration,
                        };
                        assert_eq!(TelephoneEvent::parse(&ev.write()), Some(ev));
                    }
                }
            }
        }
    }

    #[test]
    fn short_payloads_fail_and_extra_bytes_and_r_bit_are_ignored() {
        for len in 0..4 {
            assert_eq!(TelephoneEvent::parse(&[1, 2, 3, 4][..len]), None);
        }
        let ev = TelephoneEvent::parse(&[5, 0xC0 | 63, 0, 160, 9, 9, 9, 9]);
        assert_eq!(
            ev,
            Some(TelephoneEvent {
                event: 5,
                end: true,
                volume: 63,
                duration: 160
            })
        );
        // Volume is 6 bits on the way out too.
        let ev = TelephoneEvent {
            event: 1,
            end: false,
            volume: 0xFF,
            duration: 0,
        };
        assert_eq!(ev.write()[1], 0x3F);
    }

    fn packet(event: u8, end: bool, duration: u16) -> TelephoneEvent {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
    }

    #[test]
    fn receiver_reports_each_event_once() {
        let mut rx = EventReceiver::new();
        let mut keys = Vec::new();
        // '5' at 1000: running packets, then three end packets.
        for d in [160, 320, 480] {
            keys.extend(rx.on_packet(1_000, &packet(5, false, d)));
        }
        for _ in 0..3 {
            keys.extend(rx.on_packet(1_000, &packet(5, true, 640)));
        }
        // The same key again, a new press under a new timestamp, whose
        // first packets were lost: reported on its end packet.
        for _ in 0..3 {
            keys.extend(rx.on_packet(3_000, &packet(5, true, 640)));
        }
        // Reordering: '7' at 6000 overtaken by '8' at 8000, then a late
        // retransmission of '5'.
        keys.extend(rx.on_packet(8_000, &packet(8, false, 160)));
        keys.extend(rx.on_packet(6_000, &packet(7, false, 160)));
        keys.extend(rx.on_packet(6_000, &packet(7, true, 320)));
        keys.extend(rx.on_packet(8_000, &packet(8, true, 320)));
        keys.extend(rx.on_packet(1_000, &packet(5, true, 640)));
        // Flash (16) is not a key.
        keys.extend(rx.on_packet(9_000, &packet(16, true, 800)));
        assert_eq!(keys, ['5', '5', '8', '7']);
    }

    #[test]
    fn receiver_memory_is_bounded() {
        let mut rx = EventReceiver::new();
        for ts in 0..1_000u32 {
            assert_eq!(rx.on_packet(ts * 800, &packet(1, true, 400)), Some('1'));
        }
        assert_eq!(rx.seen.len(), REMEMBERED);
        // Within the window: still deduplicated.
        assert_eq!(rx.on_packet(999 * 800, &packet(1, true, 400)), None);
    }

    #[test]
    fn sender_100_ms() {
        let mut tx = EventSender::new('#', 100).expect("known key");
        let mut packets = Vec::new();
        while let Some((bytes, marker)) = tx.next_packet() {
            let ev = TelephoneEvent::parse(&bytes).expect("4 bytes");
            packets.push((ev, marker));
            assert!(packets.len() < 100, "sender does not stop");
        }
        assert_eq!(packets.len(), 8);
        for (i, (ev, marker)) in packets.iter().enumerate() {
            assert_eq!(ev.event, 11);
            assert_eq!(ev.volume, 10);
            assert_eq!(*marker, i == 0);
            if i < 5 {
                assert!(!ev.end);
                assert_eq!(ev.duration, 160 * (i as u16 + 1));
            } else {
                assert!(ev.end);
                assert_eq!(ev.duration, 800);
            }
        }
        assert_eq!(tx.next_packet(), None);
    }

    #[test]
    fn sender_lengths() {
        assert!(EventSender::new('x', 100).is_none());
        let count = |digit, ms| {
            let mut tx = EventSender::new(digit, ms).expect("key");
            std::iter::from_fn(|| tx.next_packet()).count()
        };
        // Minimum 40 ms: two running packets and three end packets.
        assert_eq!(count('1', 0), 5);
        assert_eq!(count('1', 40), 5);
        // Rounded up to whole packets.
        assert_eq!(count('1', 41), 6);
        // Capped at the 16-bit duration.
        let mut tx = EventSender::new('d', 60_000).expect("key");
        let last = std::iter::from_fn(|| tx.next_packet())
            .last()
            .and_then(|(b, _)| TelephoneEvent::parse(&b))
            .expect("packets");
        assert_eq!((last.event, last.end, last.duration), (15, true, 65_440));
    }
}
