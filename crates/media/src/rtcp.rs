//! RTCP for one call (RFC 3550 section 6): the sender or receiver report we
//! send every [`REPORT_INTERVAL`], and what the peer's reports tell us
//! (round-trip time, what they hear of our stream).
//!
//! Packets are encoded and decoded with the `rtcp` crate (webrtc-rs); this
//! module walks and validates the compound packet itself (RFC 3550 A.2)
//! before handing each SR, RR and SDES to it, so that a malformed datagram
//! is an [`RtcpError`], never a panic. No clock is read: every call takes
//! the wall-clock time it acts at, in microseconds since the Unix epoch.
//!
//! # Layout
//! - this file: NTP time helpers, [`REPORT_INTERVAL`], [`RtcpError`]
//! - [`session`]: [`RtcpSession`], building our reports and reading theirs

pub mod session;

use std::fmt;
use std::time::Duration;

pub use session::{RemoteReception, RtcpSeen, RtcpSession, SenderInfo};

/// How often a call sends a compound report. RFC 3550 computes the interval
/// from the session bandwidth; with two participants and G.711 it is the
/// 5 s minimum (section 6.2).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;

/// Largest datagram [`RtcpSession::on_receive`] accepts (the UDP limit).
pub const MAX_DATAGRAM: usize = 65_535;

/// The 64-bit NTP timestamp (32.32 fixed point seconds since 1900) of a
/// Unix time in microseconds. The seconds wrap at era 1 (2036-02-07), as on
/// the wire.
pub fn ntp_from_unix_us(unix_us: u64) -> u64 {
    let seconds = (unix_us / 1_000_000 + NTP_UNIX_OFFSET_S) & 0xFFFF_FFFF;
    let fraction = ((unix_us % 1_000_000) << 32) / 1_000_000;
    (seconds << 32) | fraction
}

/// The middle 32 bits of an NTP timestamp (16.16 fixed point seconds): the
/// LSR of a report block and the clock round-trip time is measured on.
pub fn ntp_mid32(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// A duration in 1/65536 s (DLSR, round-trip time) in milliseconds.
pub fn units_65536_to_ms(units: u32) -> f64 {
    f64::from(units) * 1000.0 / 65_536.0
}

/// Why a received datagram was not taken as RTCP.
#[derive(Debug)]
#[non_exhaustive]
pub enum RtcpError {
    /// A datagram of zero bytes.
    Empty,
    /// Larger than [`MAX_DATAGRAM`].
    TooLarge { len: usize },
    /// Fewer than 4 bytes left for a packet header at `offset`.
    Truncated { offset: usize },
    /// The packet at `offset` is not RTP version 2.
    BadVersion { offset: usize, version: u8 },
    /// The length field of the packet at `offset` runs past the datagram.
    BadLength { offset: usize },
    /// Padding on a packet other than the last, or a padding count that
    /// does not fit the packet.
    BadPadding { offset: usize },
    /// A compound packet must start with an SR or an RR.
    FirstNotReport { packet_type: u8 },
    /// The `rtcp` crate rejected the packet of this type.
    Decode {
        packet_type: u8,
        source: webrtc_util::Error,
    },
}

impl fmt::Display for RtcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty rtcp datagram"),
            Self::TooLarge { len } => write!(f, "rtcp datagram of {len} bytes is too large"),
            Self::Truncated { offset } => write!(f, "rtcp header truncated at byte {offset}"),
            Self::BadVersion { offset, version } => {
                write!(f, "rtcp packet at byte {offset} has version {version}")
            }
            Self::BadLength { offset } => {
                write!(
                    f,
                    "rtcp packet at byte {offset} is longer than the datagram"
                )
            }
            Self::BadPadding { offset } => {
                write!(f, "rtcp packet at byte {offset} has bad padding")
            }
            Self::FirstNotReport { packet_type } => {
                write!(
                    f,
                    "compound rtcp starts with packet type {packet_type}, not sr or rr"
                )
            }
            Self::Decode { packet_type, .. } => {
                write!(f, "rtcp packet of type {packet_type} does not decode")
            }
        }
    }
}

impl std::error::Error for RtcpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Decode { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_of_the_unix_epoch_and_a_fraction() {
        assert_eq!(ntp_from_unix_us(0), NTP_UNIX_OFFSET_S << 32);
        assert_eq!(
            ntp_from_unix_us(500_000),
            (NTP_UNIX_OFFSET_S << 32) | 0x8000_0000
        );
        // 2024-01-01T00:00:00.25Z
        let ntp = ntp_from_unix_us(1_704_067_200_250_000);
        assert_eq!(ntp >> 32, 1_704_067_200 + NTP_UNIX_OFFSET_S);
        assert_eq!(ntp & 0xFFFF_FFFF, 0x4000_0000);
        assert_eq!(
            ntp_mid32(ntp),
            (((1_704_067_200 + NTP_UNIX_OFFSET_S) as u32) << 16) | 0x4000
        );
    }

    #[test]
    fn ntp_seconds_wrap_at_era_one() {
        // 2036-02-07T06:28:16Z is NTP second 2^32.
        let era_one_unix_s = (1u64 << 32) - NTP_UNIX_OFFSET_S;
        assert_eq!(ntp_from_unix_us(era_one_unix_s * 1_000_000), 0);
        assert_eq!(
            ntp_from_unix_us(era_one_unix_s * 1_000_000 - 1) >> 32,
            0xFFFF_FFFF
        );
        // The middle 32 bits step across the wrap like any other second.
        let before = ntp_mid32(ntp_from_unix_us(era_one_unix_s * 1_000_000 - 40_000));
        let after = ntp_mid32(ntp_from_unix_us(era_one_unix_s * 1_000_000 + 40_000));
        assert!((units_65536_to_ms(after.wrapping_sub(before)) - 80.0).abs() < 0.05);
    }

    #[test]
    fn unit_conversion() {
        assert_eq!(units_65536_to_ms(65_536), 1000.0);
        assert_eq!(units_65536_to_ms(0), 0.0);
    }
}
