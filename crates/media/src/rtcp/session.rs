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
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::rtcp::NTP_UNIX_OFFSET_S;

    /// 2024-01-01T00:00:00Z
    const T0_US: u64 = 1_704_067_200_000_000;
    const A_SSRC: u32 = 0xA11CE;
    const B_SSRC: u32 = 0xB0B;

    fn parse_with_crate(buf: &[u8]) -> Vec<Box<dyn Packet + Send + Sync>> {
        let mut cursor = buf;
        rtcp::packet::unmarshal(&mut cursor).expect("the crate parses our report")
    }

    #[test]
    fn sender_report_round_trips_through_the_crate() {
        let mut a = RtcpSession::new(A_SSRC, "agent-7@media-1");
        let mut rx = ReceiverStats::new();
        for i in 0..100u32 {
            if i != 50 {
                rx.on_packet(i as u16, i * 160, B_SSRC, u64::from(i) * 20_000);
            }
            a.on_sent(i * 160, 160);
        }
        let buf = a.build_report(T0_US, 16_000, Some(&mut rx), None);
        let packets = parse_with_crate(&buf);
        assert_eq!(packets.len(), 2);
        let sr = packets[0]
            .as_any()
            .downcast_ref::<SenderReport>()
            .expect("first packet is an SR");
        assert_eq!(sr.ssrc, A_SSRC);
        assert_eq!(sr.ntp_time, ntp_from_unix_us(T0_US));
        assert_eq!(sr.rtp_time, 16_000);
        assert_eq!((sr.packet_count, sr.octet_count), (100, 16_000));
        assert_eq!(sr.reports.len(), 1);
        let block = &sr.reports[0];
        assert_eq!(block.ssrc, B_SSRC);
        assert_eq!(block.total_lost, 1);
        // 1 lost of 99 expected (packet 0 is the probation packet): 256/99 = 2.6.
        assert_eq!(block.fraction_lost, 2);
        assert_eq!(block.last_sequence_number, 99);
        assert_eq!((block.last_sender_report, block.delay), (0, 0));
        let sdes = packets[1]
            .as_any()
            .downcast_ref::<SourceDescription>()
            .expect("second packet is an SDES");
        assert_eq!(&sdes.chunks[0].items[0].text[..], b"agent-7@media-1");
        assert_eq!(sdes.chunks[0].items[0].sdes_type, SdesType::SdesCname);
        // And the crate's own compound validation is satisfied.
        let mut cursor = &buf[..];
        assert!(CompoundPacket::unmarshal(&mut cursor).is_ok());
    }

    #[test]
    fn receiver_report_when_nothing_was_sent_since_the_last_report() {
        let mut a = RtcpSession::new(A_SSRC, "a");
        let first = parse_with_crate(&a.build_report(T0_US, 0, None, None));
        let rr = first[0]
            .as_any()
            .downcast_ref::<ReceiverReport>()
            .expect("nothing sent: an RR");
        assert_eq!(rr.ssrc, A_SSRC);
        assert!(rr.reports.is_empty());

        a.on_sent(0, 160);
        let second = parse_with_crate(&a.build_report(T0_US + 5_000_000, 0, None, None));
        assert!(second[0].as_any().downcast_ref::<SenderReport>().is_some());
        let third = parse_with_crate(&a.build_report(T0_US + 10_000_000, 0, None, None));
        assert!(third[0].as_any().downcast_ref::<ReceiverReport>().is_some());
    }

    #[test]
    fn no_report_block_before_the_peer_was_heard() {
        let mut a = RtcpSession::new(A_SSRC, "a");
        let mut rx = ReceiverStats::new();
        let buf = a.build_report(T0_US, 0, Some(&mut rx), Some(B_SSRC));
        let packets = parse_with_crate(&buf);
        let rr = packets[0]
            .as_any()
            .downcast_ref::<ReceiverReport>()
            .expect("an RR");
        assert!(rr.reports.is_empty());
    }

    #[test]
    fn long_cname_is_cut_at_a_character_boundary() {
        let cname = "é".repeat(200); // 400 bytes
        let mut a = RtcpSession::new(A_SSRC, &cname);
        let buf = a.build_report(T0_US, 0, None, None);
        let seen = RtcpSession::new(B_SSRC, "b")
            .on_receive(&buf, T0_US)
            .expect("our own report parses");
        assert_eq!(seen.cname.as_deref(), Some("é".repeat(127).as_str()));
    }

    enum Msg {
        Rtp { seq: u16, ts: u32 },
        Rtcp(Vec<u8>),
    }

    /// One side of a simulated call: its clock is true time plus `clock_offset_us`.
    struct Party {
        session: RtcpSession,
        rx: ReceiverStats,
        peer_ssrc: u32,
        clock_offset_us: u64,
        /// Reports at `first_report_us + k * REPORT_INTERVAL`, true time.
        first_report_us: u64,
        seq: u16,
        /// Drop every n-th packet this party sends (0: none).
        drop_every: u16,
        seen: Vec<RtcpSeen>,
    }

    impl Party {
        fn new(ssrc: u32, peer_ssrc: u32, clock_offset_us: u64, first_report_us: u64) -> Self {
            Self {
                session: RtcpSession::new(ssrc, "sim"),
                rx: ReceiverStats::new(),
                peer_ssrc,
                clock_offset_us,
                first_report_us,
                seq: 1000,
                drop_every: 0,
                seen: Vec::new(),
            }
        }
    }

    /// Two parties exchanging G.711 at 20 ms and reports every 5 s for
    /// `duration_us`, with `one_way_us` of network delay each way.
    fn simulate(start_us: u64, one_way_us: u64, duration_us: u64, a: &mut Party, b: &mut Party) {
        let interval_us = crate::rtcp::REPORT_INTERVAL.as_micros() as u64;
        let mut to_b: VecDeque<(u64, Msg)> = VecDeque::new();
        let mut to_a: VecDeque<(u64, Msg)> = VecDeque::new();
        let step_us = 1_000;
        let mut t = start_us;
        while t < start_us + duration_us {
            let elapsed = t - start_us;
            for (me, out) in [(&mut *a, &mut to_b), (&mut *b, &mut to_a)] {
                let now = t + me.clock_offset_us;
                let rtp_ts = (elapsed / 125) as u32; // 8 kHz
                if elapsed % 20_000 == 0 {
                    me.session.on_sent(rtp_ts, 160);
                    me.seq = me.seq.wrapping_add(1);
                    if me.drop_every == 0 || me.seq % me.drop_every != 0 {
                        out.push_back((
                            t + one_way_us,
                            Msg::Rtp {
                                seq: me.seq,
                                ts: rtp_ts,
                            },
                        ));
                    }
                }
                if elapsed >= me.first_report_us
                    && (elapsed - me.first_report_us) % interval_us == 0
                {
                    let peer = Some(me.peer_ssrc);
                    let buf = me.session.build_report(now, rtp_ts, Some(&mut me.rx), peer);
                    out.push_back((t + one_way_us, Msg::Rtcp(buf)));
                }
            }
            for (me, inbox, from_ssrc) in
                [(&mut *b, &mut to_b, A_SSRC), (&mut *a, &mut to_a, B_SSRC)]
            {
                while inbox.front().is_some_and(|(at, _)| *at <= t) {
                    let Some((_, msg)) = inbox.pop_front() else {
                        break;
                    };
                    let now = t + me.clock_offset_us;
                    match msg {
                        Msg::Rtp { seq, ts } => me.rx.on_packet(seq, ts, from_ssrc, now),
                        Msg::Rtcp(buf) => {
                            let seen = me
                                .session
                                .on_receive(&buf, now)
                                .expect("peer report parses");
                            me.seen.push(seen);
                        }
                    }
                }
            }
            t += step_us;
        }
    }

    fn assert_rtt_80(party: &Party, label: &str) {
        let last = party
            .session
            .rtt_ms()
            .unwrap_or_else(|| panic!("{label}: no rtt"));
        let mean = party
            .session
            .mean_rtt_ms()
            .unwrap_or_else(|| panic!("{label}: no mean"));
        assert!((last - 80.0).abs() < 1.0, "{label}: last rtt {last}");
        assert!((mean - 80.0).abs() < 1.0, "{label}: mean rtt {mean}");
        for seen in &party.seen {
            if let Some(rtt) = seen.rtt_ms {
                assert!((rtt - 80.0).abs() < 1.0, "{label}: rtt {rtt}");
            }
        }
    }

    #[test]
    fn two_parties_measure_an_80_ms_round_trip() {
        // B's clock is 3.7 s ahead: RTT only uses each side's own clock.
        let mut a = Party::new(A_SSRC, B_SSRC, 0, 5_000_000);
        let mut b = Party::new(B_SSRC, A_SSRC, 3_700_000, 6_000_000);
        a.drop_every = 50; // 2 % of A's packets never reach B
        simulate(T0_US, 40_000, 60_000_000, &mut a, &mut b);

        assert_rtt_80(&a, "a");
        assert_rtt_80(&b, "b");
        assert!(a.session.rtt_samples() >= 10, "{}", a.session.rtt_samples());
        assert!(b.session.rtt_samples() >= 10);

        // What B hears of A: 2 % loss, fraction 5/256 per interval.
        let heard = a.seen.iter().filter_map(|s| s.about_us).collect::<Vec<_>>();
        assert!(heard.len() >= 10);
        let last = heard[heard.len() - 1];
        assert!((4..=6).contains(&last.fraction_lost), "{last:?}");
        assert!((50..=60).contains(&last.cumulative_lost), "{last:?}");
        assert_eq!(last.jitter, 0);
        // A's packets reach B intact.
        let heard_by_b = b.seen.iter().filter_map(|s| s.about_us).collect::<Vec<_>>();
        assert!(heard_by_b
            .iter()
            .all(|r| r.fraction_lost == 0 && r.cumulative_lost == 0));
        // Both sent, so both sent SRs, with the right sender counts.
        let info = b
            .seen
            .last()
            .and_then(|s| s.sender_info)
            .expect("a sent an SR");
        assert!(info.packet_count > 2_700 && info.octet_count == info.packet_count * 160);
        assert_eq!(b.seen.last().map(|s| s.sender_ssrc), Some(A_SSRC));
    }

    #[test]
    fn round_trip_survives_the_wrap_of_the_middle_32_bits() {
        // The middle 32 bits wrap every 65536 s; put a wrap between A's SR (at
        // start + 5 s) and B's block about it (back at A at start + 6.04 s).
        let ntp_s = T0_US / 1_000_000 + NTP_UNIX_OFFSET_S;
        let wrap_unix_s = T0_US / 1_000_000 + (65_536 - ntp_s % 65_536);
        let start = wrap_unix_s * 1_000_000 - 5_500_000;
        assert!(ntp_mid32(ntp_from_unix_us(start + 5_000_000)) > 0xFFF0_0000);
        assert!(ntp_mid32(ntp_from_unix_us(start + 6_040_000)) < 0x0010_0000);
        let mut a = Party::new(A_SSRC, B_SSRC, 0, 5_000_000);
        let mut b = Party::new(B_SSRC, A_SSRC, 0, 6_000_000);
        simulate(start, 40_000, 20_000_000, &mut a, &mut b);
        assert_rtt_80(&a, "a");
        assert_rtt_80(&b, "b");

        // And across NTP era 1 (2036-02-07T06:28:16Z), where the seconds wrap too.
        let era_one_us = ((1u64 << 32) - NTP_UNIX_OFFSET_S) * 1_000_000;
        let mut a = Party::new(A_SSRC, B_SSRC, 0, 5_000_000);
        let mut b = Party::new(B_SSRC, A_SSRC, 250_000, 6_000_000);
        simulate(era_one_us - 5_500_000, 40_000, 20_000_000, &mut a, &mut b);
        assert_rtt_80(&a, "a, era 1");
        assert_rtt_80(&b, "b, era 1");
    }

    /// A valid RR from B about A with the given LSR and DLSR, plus SDES.
    fn rr_about_a(lsr: u32, dlsr: u32) -> Vec<u8> {
        let rr = ReceiverReport {
            ssrc: B_SSRC,
            reports: vec![ReceptionReport {
                ssrc: A_SSRC,
                fraction_lost: 12,
                total_lost: 0x00FF_FFFE, // -2
                last_sequence_number: 0x0001_0005,
                jitter: 40,
                last_sender_report: lsr,
                delay: dlsr,
            }],
            ..ReceiverReport::default()
        };
        let sdes = SourceDescription {
            chunks: vec![SourceDescriptionChunk {
                source: B_SSRC,
                items: vec![SourceDescriptionItem {
                    sdes_type: SdesType::SdesCname,
                    text: b"b@example".to_vec().into(),
                }],
            }],
        };
        CompoundPacket(vec![Box::new(rr), Box::new(sdes)])
            .marshal()
            .expect("valid test packet")
            .to_vec()
    }

    #[test]
    fn report_about_us_is_decoded_and_rtt_filtered() {
        let now = T0_US + 1_000_000;
        let a_mid = ntp_mid32(ntp_from_unix_us(now));
        let mut a = RtcpSession::new(A_SSRC, "a");

        // 100 ms ago, held 20 ms by B: 80 ms.
        let seen = a
            .on_receive(&rr_about_a(a_mid.wrapping_sub(6_554), 1_311), now)
            .expect("valid");
        let rtt = seen.rtt_ms.expect("an rtt");
        assert!((rtt - 80.0).abs() < 0.1, "{rtt}");
        let about_us = seen.about_us.expect("a block about us");
        assert_eq!(about_us.cumulative_lost, -2);
        assert_eq!(about_us.fraction_lost, 12);
        assert_eq!(about_us.jitter_ms(), 5.0);
        assert!((about_us.loss_ratio() - 12.0 / 256.0).abs() < 1e-12);
        assert_eq!(about_us.ext_highest_seq, 0x0001_0005);
        assert_eq!(seen.cname.as_deref(), Some("b@example"));
        assert_eq!(seen.sender_ssrc, B_SSRC);
        assert!(seen.sender_info.is_none());

        // No LSR: no RTT, but the block still tells what B hears.
        let seen = a.on_receive(&rr_about_a(0, 0), now).expect("valid");
        assert!(seen.rtt_ms.is_none() && seen.about_us.is_some());
        // DLSR longer than the time since our SR: negative, ignored.
        let seen = a
            .on_receive(&rr_about_a(a_mid.wrapping_sub(6_554), 13_107), now)
            .expect("valid");
        assert!(seen.rtt_ms.is_none());
        // An LSR from 20 s ago: absurd, ignored.
        let seen = a
            .on_receive(&rr_about_a(a_mid.wrapping_sub(20 * 65_536), 0), now)
            .expect("valid");
        assert!(seen.rtt_ms.is_none());
        assert_eq!(a.rtt_samples(), 1);
        assert!((a.rtt_ms().unwrap_or_default() - 80.0).abs() < 0.1);
    }

    #[test]
    fn a_report_block_about_someone_else_is_not_about_us() {
        let mut c = RtcpSession::new(0xC, "c");
        let seen = c.on_receive(&rr_about_a(1, 1), T0_US).expect("valid");
        assert!(seen.about_us.is_none() && seen.rtt_ms.is_none());
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        let mut a = RtcpSession::new(A_SSRC, "a");
        let valid = rr_about_a(0, 0);
        assert!(a.on_receive(&valid, T0_US).is_ok());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("three bytes", vec![0x80, 201, 0]),
            ("version 1", {
                let mut v = valid.clone();
                v[0] = 0x41;
                v
            }),
            ("length past the end", {
                let mut v = valid.clone();
                v[3] = 0xFF;
                v
            }),
            ("truncated", valid[..valid.len() - 4].to_vec()),
            ("trailing bytes", [valid.clone(), vec![0x80]].concat()),
            ("sdes first", valid[32..].to_vec()),
            ("padding on the first of two", {
                let mut v = valid.clone();
                v[0] |= 0x20;
                v
            }),
            ("count larger than the packet", {
                let mut v = valid.clone();
                v[0] = 0x83;
                v
            }),
            ("huge", vec![0x80; MAX_DATAGRAM + 1]),
        ];
        for (name, buf) in cases {
            assert!(a.on_receive(&buf, T0_US).is_err(), "{name} was accepted");
        }
        assert!(matches!(a.on_receive(&[], T0_US), Err(RtcpError::Empty)));
        let error = a.on_receive(&valid[32..], T0_US).expect_err("sdes first");
        assert_eq!(
            error.to_string(),
            "compound rtcp starts with packet type 202, not sr or rr"
        );
    }

    #[test]
    fn padding_on_the_last_packet_is_accepted() {
        // An RR with no blocks padded by 4 octets: P set, length 2 (12 bytes).
        let buf = [0xA0, 201, 0, 2, 0, 0, 0x0B, 0x0B, 0, 0, 0, 4];
        let seen = RtcpSession::new(A_SSRC, "a")
            .on_receive(&buf, T0_US)
            .expect("valid");
        assert_eq!(seen.sender_ssrc, B_SSRC);
        let zero_pad = [0xA0, 201, 0, 2, 0, 0, 0x0B, 0x0B, 0, 0, 0, 0];
        assert!(RtcpSession::new(A_SSRC, "a")
            .on_receive(&zero_pad, T0_US)
            .is_err());
    }

    #[test]
    fn a_large_valid_datagram_is_read() {
        // 2000 empty RRs (16 000 bytes): the first sets the sender.
        let mut buf = Vec::new();
        for i in 0..2000u32 {
            buf.extend_from_slice(&[0x80, 201, 0, 1]);
            buf.extend_from_slice(&(i + 1).to_be_bytes());
        }
        let seen = RtcpSession::new(A_SSRC, "a")
            .on_receive(&buf, T0_US)
            .expect("valid");
        assert_eq!(seen.sender_ssrc, 1);
    }

    #[test]
    fn random_and_mutated_datagrams_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0005);
        // A valid SR compound with a block and an LSR, to mutate.
        let mut b = RtcpSession::new(B_SSRC, "b@fuzz");
        let mut rx = ReceiverStats::new();
        for i in 0..10u32 {
            rx.on_packet(i as u16, i * 160, A_SSRC, u64::from(i) * 20_000);
            b.on_sent(i * 160, 160);
        }
        let mut a = RtcpSession::new(A_SSRC, "a");
        let a_report = a.build_report(T0_US, 0, None, None);
        b.on_receive(&a_report, T0_US).expect("valid");
        let valid = [
            b.build_report(T0_US + 500_000, 800, Some(&mut rx), None),
            rr_about_a(5, 5),
        ]
        .concat();
        assert!(a.on_receive(&valid, T0_US + 1_000_000).is_ok());

        let mut accepted = 0u32;
        for i in 0..200_000u32 {
            let buf = if i % 2 == 0 {
                let len = rng.usize(0..200);
                let mut v: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                // Half of them look like RTCP at first glance.
                if !v.is_empty() && rng.bool() {
                    v[0] = 0x80 | (v[0] & 0x3F);
                    if v.len() > 1 {
                        v[1] = rng.u8(200..=207);
                    }
                }
                v
            } else {
                mutate(&mut rng, &valid)
            };
            let now = T0_US + u64::from(i) * 1_000;
            if let Ok(seen) = a.on_receive(&buf, now) {
                accepted += 1;
                if let Some(rtt) = seen.rtt_ms {
                    assert!((0.0..=MAX_RTT_MS).contains(&rtt));
                }
            }
        }
        // Mutations that only touch payload bytes still parse.
        assert!(accepted > 1_000, "{accepted}");
    }

    fn mutate(rng: &mut fastrand::Rng, valid: &[u8]) -> Vec<u8> {
        let mut v = valid.to_vec();
        for _ in 0..rng.usize(1..4) {
            match rng.u8(0..7) {
                0 => {
                    let at = rng.usize(..v.len().max(1));
                    if let Some(byte) = v.get_mut(at) {
                        *byte ^= 1 << rng.u8(0..8);
                    }
                }
                1 => {
                    let at = rng.usize(..v.len().max(1));
                    if let Some(byte) = v.get_mut(at) {
                        *byte = rng.u8(..);
                    }
                }
                2 => v.truncate(rng.usize(0..=v.len())),
                3 => v.extend((0..rng.usize(1..64)).map(|_| rng.u8(..))),
                4 => {
                    // Lie in a length field (packet headers sit on 4-byte boundaries).
                    let at = rng.usize(..v.len().max(1) / 4 + 1) * 4 + 2;
                    let lie = rng.u16(..).to_be_bytes();
                    if at + 1 < v.len() {
                        v[at] = lie[0];
                        v[at + 1] = lie[1];
                    }
                }
                5 => {
                    // Lie in a count field.
                    let at = rng.usize(..v.len().max(1) / 4 + 1) * 4;
                    if let Some(byte) = v.get_mut(at) {
                        *byte = (*byte & 0xE0) | rng.u8(0..32);
                    }
                }
                _ => {
                    let copy = v.clone();
                    v.extend_from_slice(&copy);
                }
            }
        }
        v
    }
}
