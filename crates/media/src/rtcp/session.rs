//! One call's RTCP state: what we sent, the peer's last sender report, and
//! the round-trip times measured from their report blocks.

use rtcp::compound_packet::CompoundPacket;
use rtcp::packet::Packet;
use rtcp::receiver_report::ReceiverReport;
use rtcp::reception_report::ReceptionReport;
use rtcp::sender_report::SenderReport;
use rtcp::source_description::{
    SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem,
};
use webrtc_util::marshal::{Marshal, Unmarshal};

use super::{ntp_from_unix_us, ntp_mid32, units_65536_to_ms, RtcpError, MAX_DATAGRAM};
use crate::quality::{ReceiverStats, CLOCK_RATE_HZ};

const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;
const PT_BYE: u8 = 203;
/// Round-trip times above this are taken as a stale or bogus LSR, not as a measurement.
const MAX_RTT_MS: f64 = 10_000.0;
/// An SDES item carries at most 255 octets.
const MAX_CNAME_LEN: usize = 255;

/// The sender information of the peer's SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    /// 64-bit NTP time the peer sent the report at (its clock).
    pub ntp_time: u64,
    /// RTP timestamp of the peer's stream at `ntp_time`.
    pub rtp_time: u32,
    /// RTP packets the peer has sent (wraps).
    pub packet_count: u32,
    /// Payload octets the peer has sent (wraps).
    pub octet_count: u32,
}

/// What the peer reports hearing of our stream (a report block about our SSRC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteReception {
    /// Loss over the peer's last interval, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost since the start (negative with duplicates).
    pub cumulative_lost: i32,
    /// Highest sequence number the peer received, with wraps in the high half.
    pub ext_highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
}

impl RemoteReception {
    /// `fraction_lost` as a ratio, 0 to 1.
    pub fn loss_ratio(&self) -> f64 {
        f64::from(self.fraction_lost) / 256.0
    }

    /// `jitter` in milliseconds at the G.711 clock.
    pub fn jitter_ms(&self) -> f64 {
        f64::from(self.jitter) * 1000.0 / f64::from(CLOCK_RATE_HZ)
    }
}

/// What one compound packet from the peer said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RtcpSeen {
    /// SSRC of the report that opens the compound packet.
    pub sender_ssrc: u32,
    /// The sender information, when the peer sent an SR.
    pub sender_info: Option<SenderInfo>,
    /// The peer's report block about our SSRC, if there was one.
    pub about_us: Option<RemoteReception>,
    /// Round-trip time measured from that block, if it carried a usable LSR.
    pub rtt_ms: Option<f64>,
    /// The peer's CNAME, if an SDES carried one (lossy UTF-8).
    pub cname: Option<String>,
    /// The peer said goodbye (BYE).
    pub bye: bool,
}

/// The last SR heard from the peer, for the LSR and DLSR of our next block.
#[derive(Debug, Clone, Copy)]
struct PeerSr {
    ssrc: u32,
    /// Middle 32 bits of its NTP time.
    mid32: u32,
    /// When we received it, on our clock.
    received_at_us: u64,
}

/// RTCP for one call's stream pair: our outgoing stream (SSRC `ssrc`) and
/// the peer's, whose [`ReceiverStats`] the caller passes to
/// [`RtcpSession::build_report`].
#[derive(Debug, Clone)]
pub struct RtcpSession {
    /// Our SSRC.
    ssrc: u32,
    /// Our CNAME, at most 255 bytes.
    cname: Vec<u8>,
    /// RTP packets we sent (wraps, as in the SR).
    packets_sent: u32,
    /// RTP payload octets we sent (wraps, as in the SR).
    octets_sent: u32,
    /// RTP timestamp of the last packet we sent.
    last_sent_rtp_ts: Option<u32>,
    /// We sent RTP since the last report: the next one is an SR.
    sent_since_report: bool,
    /// The peer's last SR.
    peer_sr: Option<PeerSr>,
    /// Last round-trip time measured.
    rtt_last_ms: Option<f64>,
    /// Sum of the round-trip times measured, for the mean.
    rtt_sum_ms: f64,
    /// Round-trip times measured.
    rtt_samples: u64,
}

impl RtcpSession {
    /// A session sending as `ssrc` with canonical name `cname` (cut to 255
    /// bytes, at a character boundary).
    pub fn new(ssrc: u32, cname: &str) -> Self {
        let mut end = cname.len().min(MAX_CNAME_LEN);
        while !cname.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            ssrc,
            cname: cname.as_bytes()[..end].to_vec(),
            packets_sent: 0,
            octets_sent: 0,
            last_sent_rtp_ts: None,
            sent_since_report: false,
            peer_sr: None,
            rtt_last_ms: None,
            rtt_sum_ms: 0.0,
            rtt_samples: 0,
        }
    }

    /// Our SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// RTP packets sent so far (wraps at 2^32, as in the SR).
    pub fn packets_sent(&self) -> u32 {
        self.packets_sent
    }

    /// RTP payload octets sent so far (wraps at 2^32, as in the SR).
    pub fn octets_sent(&self) -> u32 {
        self.octets_sent
    }

    /// RTP timestamp of the last packet sent.
    pub fn last_sent_rtp_ts(&self) -> Option<u32> {
        self.last_sent_rtp_ts
    }

    /// Count one RTP packet we sent, `payload_len` octets of payload (RTP
    /// header excluded, as RFC 3550 counts them).
    pub fn on_sent(&mut self, rtp_ts: u32, payload_len: usize) {
        self.packets_sent = self.packets_sent.wrapping_add(1);
        // The octet count wraps on the wire; truncating the length first wraps the same way.
        self.octets_sent = self.octets_sent.wrapping_add(payload_len as u32);
        self.last_sent_rtp_ts = Some(rtp_ts);
        self.sent_since_report = true;
    }

    /// Last round-trip time measured, in ms.
    pub fn rtt_ms(&self) -> Option<f64> {
        self.rtt_last_ms
    }

    /// Mean of the round-trip times measured over the call, in ms.
    pub fn mean_rtt_ms(&self) -> Option<f64> {
        (self.rtt_samples > 0).then(|| self.rtt_sum_ms / self.rtt_samples as f64)
    }

    /// Round-trip times measured over the call.
    pub fn rtt_samples(&self) -> u64 {
        self.rtt_samples
    }

    /// Our compound report at `now_unix_us`: an SR if we sent RTP since the
    /// last report (its RTP timestamp `rtp_ts_now` being our media clock at
    /// `now_unix_us`), else an RR; then an SDES with our CNAME.
    ///
    /// When `rx` has heard the peer, the report carries one block about
    /// `remote_ssrc` (or the SSRC `rx` measured, if `None`), closing `rx`'s
    /// report interval.
    pub fn build_report(
        &mut self,
        now_unix_us: u64,
        rtp_ts_now: u32,
        rx: Option<&mut ReceiverStats>,
        remote_ssrc: Option<u32>,
    ) -> Vec<u8> {
        let mut blocks = Vec::with_capacity(1);
        if let Some(rx) = rx {
            // Nothing heard yet: nothing to report on.
            if let Some(heard) = rx.ssrc() {
                let ssrc = remote_ssrc.unwrap_or(heard);
                blocks.push(self.report_block(ssrc, rx, now_unix_us));
            }
        }
        let report: Box<dyn Packet + Send + Sync> = if self.sent_since_report {
            Box::new(SenderReport {
                ssrc: self.ssrc,
                ntp_time: ntp_from_unix_us(now_unix_us),
                rtp_time: rtp_ts_now,
                packet_count: self.packets_sent,
                octet_count: self.octets_sent,
                reports: blocks,
                ..SenderReport::default()
            })
        } else {
            Box::new(ReceiverReport {
                ssrc: self.ssrc,
                reports: blocks,
                ..ReceiverReport::default()
            })
        };
        self.sent_since_report = false;
        let sdes = SourceDescription {
            chunks: vec![SourceDescriptionChunk {
                source: self.ssrc,
                items: vec![SourceDescriptionItem {
                    sdes_type: SdesType::SdesCname,
                    text: self.cname.clone().into(),
                }],
            }],
        };
        match CompoundPacket(vec![report, Box::new(sdes)]).marshal() {
            Ok(bytes) => bytes.to_vec(),
            // Unreachable: at most one block, a CNAME of at most 255 bytes and a
            // 24-bit loss are all the encoder checks.
            Err(error) => {
                debug_assert!(false, "rtcp report does not encode: {error}");
                Vec::new()
            }
        }
    }

    fn report_block(&self, ssrc: u32, rx: &mut ReceiverStats, now_unix_us: u64) -> ReceptionReport {
        let interval = rx.take_interval();
        let (last_sender_report, delay) = match self.peer_sr {
            Some(sr) if sr.ssrc == ssrc => {
                let since_us = now_unix_us.saturating_sub(sr.received_at_us);
                // 1/65536 s per unit; saturates after 18 h without an SR.
                let units = u128::from(since_us) * 65_536 / 1_000_000;
                (sr.mid32, u32::try_from(units).unwrap_or(u32::MAX))
            }
            _ => (0, 0),
        };
        ReceptionReport {
            ssrc,
            fraction_lost: interval.fraction_lost,
            // 24-bit two's complement; `cumulative_lost` is already within range.
            total_lost: (interval.cumulative_lost as u32) & 0x00FF_FFFF,
            last_sequence_number: interval.ext_highest_seq,
            jitter: interval.jitter,
            last_sender_report,
            delay,
        }
    }

    /// Read a compound packet from the peer received at `now_unix_us`.
    ///
    /// Nothing is remembered unless the whole datagram is valid: the peer's
    /// SR (for our next LSR/DLSR) and the round-trip time measured from its
    /// block about us (RTT = now − LSR − DLSR, in the middle 32 bits of NTP
    /// time; negative or above 10 s is ignored).
    pub fn on_receive(&mut self, buf: &[u8], now_unix_us: u64) -> Result<RtcpSeen, RtcpError> {
        let packets = split_compound(buf)?;
        let mut seen = RtcpSeen::default();
        let mut peer_sr = None;
        for (index, packet) in packets.iter().enumerate() {
            let decode = |source| RtcpError::Decode {
                packet_type: packet.packet_type,
                source,
            };
            let mut body = packet.bytes;
            let blocks = match packet.packet_type {
                PT_SR => {
                    let sr = SenderReport::unmarshal(&mut body).map_err(decode)?;
                    if index == 0 {
                        seen.sender_ssrc = sr.ssrc;
                    }
                    if seen.sender_info.is_none() {
                        seen.sender_info = Some(SenderInfo {
                            ntp_time: sr.ntp_time,
                            rtp_time: sr.rtp_time,
                            packet_count: sr.packet_count,
                            octet_count: sr.octet_count,
                        });
                        peer_sr = Some(PeerSr {
                            ssrc: sr.ssrc,
                            mid32: ntp_mid32(sr.ntp_time),
                            received_at_us: now_unix_us,
                        });
                    }
                    sr.reports
                }
                PT_RR => {
                    let rr = ReceiverReport::unmarshal(&mut body).map_err(decode)?;
                    if index == 0 {
                        seen.sender_ssrc = rr.ssrc;
                    }
                    rr.reports
                }
                PT_SDES => {
                    let sdes = SourceDescription::unmarshal(&mut body).map_err(decode)?;
                    if seen.cname.is_none() {
                        seen.cname = sdes
                            .chunks
                            .iter()
                            .flat_map(|chunk| &chunk.items)
                            .find(|item| item.sdes_type == SdesType::SdesCname)
                            .map(|item| String::from_utf8_lossy(&item.text).into_owned());
                    }
                    continue;
                }
                PT_BYE => {
                    seen.bye = true;
                    continue;
                }
                // APP, feedback, XR: nothing a G.711 call acts on.
                _ => continue,
            };
            if seen.about_us.is_none() {
                if let Some(block) = blocks.iter().find(|b| b.ssrc == self.ssrc) {
                    seen.about_us = Some(remote_reception(block));
                    seen.rtt_ms = rtt_ms(block, now_unix_us);
                }
            }
        }
        if peer_sr.is_some() {
            self.peer_sr = peer_sr;
        }
        if let Some(rtt) = seen.rtt_ms {
            self.rtt_last_ms = Some(rtt);
            self.rtt_sum_ms += rtt;
            self.rtt_samples += 1;
        }
        Ok(seen)
    }
}

fn remote_reception(block: &ReceptionReport) -> RemoteReception {
    RemoteReception {
        fraction_lost: block.fraction_lost,
        // Sign-extend the 24-bit field.
        cumulative_lost: ((block.total_lost << 8) as i32) >> 8,
        ext_highest_seq: block.last_sequence_number,
        jitter: block.jitter,
    }
}

/// RTT = A − LSR − DLSR (RFC 3550 6.4.1), all in 1/65536 s and modulo 2^32.
fn rtt_ms(block: &ReceptionReport, now_unix_us: u64) -> Option<f64> {
    if block.last_sender_report == 0 {
        return None;
    }
    let arrival = ntp_mid32(ntp_from_unix_us(now_unix_us));
    let units = arrival
        .wrapping_sub(block.last_sender_report)
        .wrapping_sub(block.delay);
    // A "negative" round trip (bit 31 set) is a peer's clock or DLSR error.
    if units > i32::MAX as u32 {
        return None;
    }
    let ms = units_65536_to_ms(units);
    (ms <= MAX_RTT_MS).then_some(ms)
}

/// One packet of a compound datagram: type and bytes, padding removed.
struct RawPacket<'a> {
    packet_type: u8,
    bytes: &'a [u8],
}

/// Split and validate a compound datagram (RFC 3550 A.2): version 2
/// everywhere, the first packet an SR or RR, lengths that add up to the
/// datagram, padding only on the last packet.
fn split_compound(buf: &[u8]) -> Result<Vec<RawPacket<'_>>, RtcpError> {
    if buf.is_empty() {
        return Err(RtcpError::Empty);
    }
    if buf.len() > MAX_DATAGRAM {
        return Err(RtcpError::TooLarge { len: buf.len() });
    }
    let mut packets = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        let &[b0, packet_type, len_hi, len_lo, ..] = rest else {
            return Err(RtcpError::Truncated { offset });
        };
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion { offset, version });
        }
        let len = (usize::from(u16::from_be_bytes([len_hi, len_lo])) + 1) * 4;
        let Some(packet) = rest.get(..len) else {
            return Err(RtcpError::BadLength { offset });
        };
        let mut bytes = packet;
        if b0 & 0x20 != 0 {
            let padding = usize::from(packet[len - 1]);
            if offset + len != buf.len() || padding == 0 || padding > len - 4 {
                return Err(RtcpError::BadPadding { offset });
            }
            bytes = &packet[..len - padding];
        }
        if packets.is_empty() && packet_type != PT_SR && packet_type != PT_RR {
            return Err(RtcpError::FirstNotReport { packet_type });
        }
        packets.push(RawPacket { packet_type, bytes });
        offset += len;
    }
    Ok(packets)
}

#[cfg(test)]
mod tests;
