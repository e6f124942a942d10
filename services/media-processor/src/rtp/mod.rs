//! RTP for answered calls: the port pool (RTP on an even port, RTCP on the
//! next), the accept rule of an incoming stream ([`StreamGate`]: negotiated
//! source, one SSRC), the outgoing tone ([`ToneStream`]), and the per-call
//! media loop ([`stream`]) with its metrics ([`metrics`]). The codec, jitter
//! buffer, statistics and RTCP are pure code in `dialstack-media`.

pub mod batch;
pub mod metrics;
pub mod stream;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use webrtc_util::marshal::Unmarshal;

use dialstack_media::g711::{linear_to_alaw, linear_to_ulaw};

/// Samples per 20 ms packet at 8 kHz.
pub const SAMPLES_PER_PACKET: usize = 160;

/// One 20 ms packet of a 425 Hz tone (the European ring-back pitch) at a low
/// level, encoded for `payload_type` (0 µ-law, 8 A-law), starting at sample `n`.
#[cfg(test)]
pub fn tone_payload(payload_type: u8, n: u64) -> bytes::Bytes {
    let mut out = Vec::with_capacity(SAMPLES_PER_PACKET);
    for i in 0..SAMPLES_PER_PACKET as u64 {
        let v = tone_sample(n + i);
        out.push(if payload_type == 8 {
            linear_to_alaw(v)
        } else {
            linear_to_ulaw(v)
        });
    }
    bytes::Bytes::from(out)
}

/// Bytes of one G.711 20 ms RTP packet: 12 of header, 160 of audio.
pub const RTP_PACKET_LEN: usize = 12 + SAMPLES_PER_PACKET;

/// Samples in one whole number of tone periods: 425 Hz at 8 kHz repeats
/// exactly every 320 samples (17 periods), so two frames cover it.
const TONE_SPAN: usize = 320;

/// The tone, precomputed: linear samples, and per law the encoded bytes
/// and what they decode to (what the far end hears, and what is recorded
/// as sent).
struct ToneTable {
    ulaw: [u8; TONE_SPAN],
    alaw: [u8; TONE_SPAN],
    ulaw_heard: [[i16; SAMPLES_PER_PACKET]; 2],
    alaw_heard: [[i16; SAMPLES_PER_PACKET]; 2],
}

fn tone_table() -> &'static ToneTable {
    static TABLE: OnceLock<ToneTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = ToneTable {
            ulaw: [0; TONE_SPAN],
            alaw: [0; TONE_SPAN],
            ulaw_heard: [[0; SAMPLES_PER_PACKET]; 2],
            alaw_heard: [[0; SAMPLES_PER_PACKET]; 2],
        };
        for i in 0..TONE_SPAN {
            let v = tone_sample(i as u64);
            t.ulaw[i] = linear_to_ulaw(v);
            t.alaw[i] = linear_to_alaw(v);
            t.ulaw_heard[i / SAMPLES_PER_PACKET][i % SAMPLES_PER_PACKET] =
                dialstack_media::g711::ulaw_to_linear(t.ulaw[i]);
            t.alaw_heard[i / SAMPLES_PER_PACKET][i % SAMPLES_PER_PACKET] =
                dialstack_media::g711::alaw_to_linear(t.alaw[i]);
        }
        t
    })
}

/// Sample `n` of the 425 Hz tone (the European ring-back pitch) at a low level.
fn tone_sample(n: u64) -> i16 {
    let t = n as f64 / 8_000.0;
    (2_000.0 * (2.0 * std::f64::consts::PI * 425.0 * t).sin()) as i16
}

/// RTP ports handed out round-robin from a range; a port in use is skipped.
pub struct PortPool {
    lo: u16,
    hi: u16,
    next: AtomicU16,
}

impl PortPool {
    /// Parses `lo-hi` (even ports only are used, RTCP takes the odd one), or
    /// `0` for ephemeral ports.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "0" {
            return Ok(Self {
                lo: 0,
                hi: 0,
                next: AtomicU16::new(0),
            });
        }
        let (lo, hi) = s
            .split_once('-')
            .ok_or("expected lo-hi, e.g. 20000-29999")?;
        let lo: u16 = lo.trim().parse().map_err(|_| "bad lower port")?;
        let hi: u16 = hi.trim().parse().map_err(|_| "bad upper port")?;
        if lo < 1024 || hi <= lo {
            return Err("range must be above 1023 and lo < hi".into());
        }
        Ok(Self {
            lo,
            hi,
            next: AtomicU16::new(lo),
        })
    }

    /// Binds a socket on `ip` at the next free port.
    pub async fn bind(&self, ip: IpAddr) -> std::io::Result<UdpSocket> {
        if self.lo == 0 {
            return UdpSocket::bind(SocketAddr::new(ip, 0)).await;
        }
        let span = (self.hi - self.lo) / 2 + 1;
        for _ in 0..span {
            let p = self.next.fetch_add(2, Ordering::Relaxed);
            let port = if p < self.lo || p > self.hi {
                self.next.store(self.lo + 2, Ordering::Relaxed);
                self.lo
            } else {
                p & !1
            };
            if let Ok(sock) = UdpSocket::bind(SocketAddr::new(ip, port)).await {
                return Ok(sock);
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no free RTP port in range",
        ))
    }

    /// Binds an RTP socket on an even port and its RTCP socket on the next
    /// port (RFC 3550 §11); a pair with either half in use is skipped.
    ///
    /// With ephemeral ports (`0`, for tests and `dialstack up
    /// --ephemeral-ports`) both are ephemeral: claiming RTP + 1 there could
    /// take a port another program was just told is free, and a peer's
    /// reports to RTP + 1 are then not received.
    pub async fn bind_pair(&self, ip: IpAddr) -> std::io::Result<(UdpSocket, UdpSocket)> {
        if self.lo == 0 {
            let rtp = self.bind(ip).await?;
            let rtcp = self.bind(ip).await?;
            return Ok((rtp, rtcp));
        }
        let tries = (self.hi - self.lo) / 2 + 1;
        for _ in 0..tries {
            let rtp = self.bind(ip).await?;
            let port = rtp.local_addr()?.port();
            if port % 2 != 0 || port == u16::MAX {
                continue;
            }
            if let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(ip, port + 1)).await {
                return Ok((rtp, rtcp));
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no free RTP/RTCP port pair",
        ))
    }
}

/// How long the locked SSRC must have been silent before a new SSRC from the
/// right source takes over (a legitimate change: the far end switched
/// streams, after a transfer say, and the old one stopped).
pub const SSRC_RESYNC_SILENCE: Duration = Duration::from_millis(200);

/// What a receiver decides about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Accept,
    /// Not RTP, or a payload type not negotiated.
    Malformed,
    /// From the wrong address.
    WrongSource,
    /// Of the wrong SSRC.
    WrongSsrc,
}

/// The accept rule of one incoming stream: source address (negotiated in
/// SDP, or latched to the first packet's source when latching is on) and
/// one SSRC, with the resync rule above. Pure, so it is tested without
/// sockets.
#[derive(Debug, Clone)]
pub struct StreamGate {
    /// The address packets must come from (`None` until latched).
    pub source: Option<SocketAddr>,
    /// Latch to the first packet's source (`DIALSTACK_RTP_LATCH=1`).
    pub latch: bool,
    /// Payload types negotiated (audio and telephone-event).
    pub payload_types: [Option<u8>; 2],
    ssrc: Option<u32>,
    last_accept: Option<std::time::Instant>,
}

impl StreamGate {
    /// A gate for the stream negotiated at `source`.
    pub fn new(source: SocketAddr, latch: bool, payload_types: [Option<u8>; 2]) -> Self {
        Self {
            source: (!latch).then_some(source),
            latch,
            payload_types,
            ssrc: None,
            last_accept: None,
        }
    }

    /// The peer moved (re-INVITE): a new address, the SSRC lock released.
    pub fn renegotiate(&mut self, source: SocketAddr, payload_types: [Option<u8>; 2]) {
        if !self.latch {
            self.source = Some(source);
        }
        self.payload_types = payload_types;
        self.ssrc = None;
    }

    /// Judges one datagram from `from` at `now`.
    pub fn judge(&mut self, buf: &[u8], from: SocketAddr, now: std::time::Instant) -> Verdict {
        match self.admit(buf, from, now) {
            Ok(_) => Verdict::Accept,
            Err(v) => v,
        }
    }

    /// Judges one datagram and hands back the header of an accepted one.
    pub fn admit(
        &mut self,
        buf: &[u8],
        from: SocketAddr,
        now: std::time::Instant,
    ) -> Result<rtp::header::Header, Verdict> {
        let Some(pkt) = parse_rtp_header(buf) else {
            return Err(Verdict::Malformed);
        };
        match self.source {
            Some(s) if s != from => return Err(Verdict::WrongSource),
            _ => {}
        }
        if !self.payload_types.contains(&Some(pkt.payload_type)) {
            return Err(Verdict::Malformed);
        }
        match self.ssrc {
            Some(locked) if locked != pkt.ssrc => {
                let silent = self
                    .last_accept
                    .is_none_or(|t| now.duration_since(t) >= SSRC_RESYNC_SILENCE);
                if !silent {
                    return Err(Verdict::WrongSsrc);
                }
                tracing::debug!(old = locked, new = pkt.ssrc, "rtp ssrc resync");
            }
            _ => {}
        }
        if self.source.is_none() {
            self.source = Some(from);
        }
        self.ssrc = Some(pkt.ssrc);
        self.last_accept = Some(now);
        Ok(pkt)
    }

    /// Where to send: the latched source when latching, else `negotiated`.
    pub fn send_to(&self, negotiated: SocketAddr) -> SocketAddr {
        if self.latch {
            self.source.unwrap_or(negotiated)
        } else {
            negotiated
        }
    }
}

/// Parses one datagram as RTP; `None` when it is not a valid RTP packet.
pub fn parse_rtp(buf: &[u8]) -> Option<rtp::packet::Packet> {
    let mut b = buf;
    let pkt = rtp::packet::Packet::unmarshal(&mut b).ok()?;
    (pkt.header.version == 2).then_some(pkt)
}

/// The RTP header fields the gate needs, without copying the payload.
pub fn parse_rtp_header(buf: &[u8]) -> Option<rtp::header::Header> {
    let mut b = buf;
    let h = rtp::header::Header::unmarshal(&mut b).ok()?;
    (h.version == 2).then_some(h)
}

/// Sends a tone to `remote` every 20 ms until `stop` (the simulated
/// carrier's side of a call).
pub async fn send_tone(
    sock: Arc<UdpSocket>,
    remote: SocketAddr,
    payload_type: u8,
    stop: CancellationToken,
) {
    let mut tone = ToneStream::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = [0u8; RTP_PACKET_LEN];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                tone.write_packet(payload_type, true, &mut out);
                let _ = sock.send_to(&out, remote).await;
            }
        }
    }
}

/// The outgoing side of one stream: SSRC, sequence number and timestamp
/// (random starts, RFC 3550), and a 425 Hz tone as the audio.
pub struct ToneStream {
    ssrc: u32,
    seq: u16,
    ts: u32,
    last_ts: u32,
    samples: u64,
    first: bool,
}

impl ToneStream {
    /// A stream with random SSRC, sequence and timestamp origins.
    pub fn new() -> Self {
        Self {
            ssrc: fastrand::u32(..),
            seq: fastrand::u16(..),
            ts: fastrand::u32(..),
            last_ts: 0,
            samples: 0,
            first: true,
        }
    }

    /// Advances one 20 ms frame and returns its packet; `sending` false
    /// (on hold) advances the clock without a packet to mark, and the next
    /// packet sent carries the marker bit (a talkspurt begins). The
    /// reference that [`Self::write_packet`] is tested against.
    #[cfg(test)]
    pub fn next_packet(&mut self, payload_type: u8, sending: bool) -> rtp::packet::Packet {
        let pkt = rtp::packet::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: self.first,
                payload_type,
                sequence_number: self.seq,
                timestamp: self.ts,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: tone_payload(payload_type, self.samples),
        };
        self.last_ts = self.ts;
        self.advance(sending);
        pkt
    }

    /// Advances one 20 ms frame (the clock always, the sequence number only when `sending`), writing the
    /// packet into `out` without allocating; returns the frame as the far
    /// end decodes it.
    pub fn write_packet(
        &mut self,
        payload_type: u8,
        sending: bool,
        out: &mut [u8; RTP_PACKET_LEN],
    ) -> &'static [i16; SAMPLES_PER_PACKET] {
        let table = tone_table();
        let half = ((self.samples / SAMPLES_PER_PACKET as u64) % 2) as usize;
        let (bytes, heard) = if payload_type == 8 {
            (&table.alaw, &table.alaw_heard[half])
        } else {
            (&table.ulaw, &table.ulaw_heard[half])
        };
        out[0] = 0x80;
        out[1] = (u8::from(self.first) << 7) | (payload_type & 0x7F);
        out[2..4].copy_from_slice(&self.seq.to_be_bytes());
        out[4..8].copy_from_slice(&self.ts.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        let from = half * SAMPLES_PER_PACKET;
        out[12..].copy_from_slice(&bytes[from..from + SAMPLES_PER_PACKET]);
        self.last_ts = self.ts;
        self.advance(sending);
        heard
    }

    /// Like [`Self::write_packet`] with `pcm` as the audio instead of the
    /// tone (a bridged call relays the other leg's voice, a prompt plays
    /// its frames).
    pub fn write_pcm(
        &mut self,
        payload_type: u8,
        sending: bool,
        pcm: &[i16; SAMPLES_PER_PACKET],
        out: &mut [u8; RTP_PACKET_LEN],
    ) {
        let codec = dialstack_media::g711::Codec::from_payload_type(payload_type)
            .unwrap_or(dialstack_media::g711::Codec::Pcmu);
        out[0] = 0x80;
        out[1] = (u8::from(self.first) << 7) | (payload_type & 0x7F);
        out[2..4].copy_from_slice(&self.seq.to_be_bytes());
        out[4..8].copy_from_slice(&self.ts.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        codec.encode(pcm, &mut out[12..]);
        self.last_ts = self.ts;
        self.advance(sending);
    }

    /// The RTP timestamp the next frame will carry (an outgoing
    /// telephone-event starts here).
    pub fn next_timestamp(&self) -> u32 {
        self.ts
    }

    /// Like [`Self::write_pcm`], but the frame's packet is an RFC 4733
    /// telephone-event: the event's start timestamp `event_ts`, the 4-byte
    /// payload, `marker` on its first packet. Returns the packet's length.
    pub fn write_event(
        &mut self,
        payload_type: u8,
        sending: bool,
        event_ts: u32,
        marker: bool,
        payload: [u8; 4],
        out: &mut [u8; RTP_PACKET_LEN],
    ) -> usize {
        out[0] = 0x80;
        out[1] = (u8::from(marker) << 7) | (payload_type & 0x7F);
        out[2..4].copy_from_slice(&self.seq.to_be_bytes());
        out[4..8].copy_from_slice(&event_ts.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        out[12..16].copy_from_slice(&payload);
        self.last_ts = self.ts;
        self.advance(sending);
        // Audio after the event begins a new talkspurt.
        self.first = true;
        16
    }

    fn advance(&mut self, sending: bool) {
        self.ts = self.ts.wrapping_add(SAMPLES_PER_PACKET as u32);
        self.samples += SAMPLES_PER_PACKET as u64;
        if sending {
            self.seq = self.seq.wrapping_add(1);
            self.first = false;
        } else {
            self.first = true;
        }
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// RTP timestamp of the last frame produced.
    pub fn last_timestamp(&self) -> u32 {
        self.last_ts
    }

    /// Moves the media clock on by `frames` frames that are not sent (the
    /// sender fell too far behind its 20 ms grid to catch up): the
    /// timestamp keeps pace with the wall clock, the sequence number does
    /// not move (nothing was lost on the way), and the next packet begins
    /// a talkspurt, as after silence.
    pub fn skip(&mut self, frames: u64) {
        let samples = frames.saturating_mul(SAMPLES_PER_PACKET as u64);
        self.ts = self.ts.wrapping_add(samples as u32);
        self.samples = self.samples.wrapping_add(samples);
        self.first = true;
    }

    /// The next packet begins a talkspurt (after a re-negotiation).
    pub fn restart_talkspurt(&mut self) {
        self.first = true;
    }
}

impl Default for ToneStream {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_util::marshal::Marshal;

    #[test]
    fn written_packets_match_the_marshalled_ones_and_advance_the_clock() {
        for pt in [0u8, 8] {
            let mut a = ToneStream::new();
            let mut b = ToneStream {
                ssrc: a.ssrc,
                seq: a.seq,
                ts: a.ts,
                last_ts: 0,
                samples: 0,
                first: true,
            };
            let mut out = [0u8; RTP_PACKET_LEN];
            for i in 0..7 {
                let sending = i != 3;
                let heard = a.write_packet(pt, sending, &mut out);
                let want = b.next_packet(pt, sending).marshal().unwrap();
                assert_eq!(&out[..], &want[..], "packet {i}, payload type {pt}");
                let decoded: Vec<i16> = out[12..]
                    .iter()
                    .map(|&c| {
                        if pt == 8 {
                            dialstack_media::g711::alaw_to_linear(c)
                        } else {
                            dialstack_media::g711::ulaw_to_linear(c)
                        }
                    })
                    .collect();
                assert_eq!(&decoded[..], &heard[..]);
                // The marker starts each talkspurt: the first packet, and the
                // first after a frame not sent.
                assert_eq!(out[1] >> 7 == 1, i == 0 || i == 4);
            }
            assert_eq!(a.last_timestamp(), b.ts.wrapping_sub(160));
        }
    }

    // The G.711 reference points are tested in dialstack-media, where the
    // codec lives.
    #[test]
    fn tone_payloads_are_one_frame() {
        assert_eq!(tone_payload(0, 0).len(), SAMPLES_PER_PACKET);
        assert_eq!(tone_payload(8, 160).len(), SAMPLES_PER_PACKET);
    }

    #[test]
    fn rtp_round_trip_and_garbage() {
        let pkt = rtp::packet::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: 0,
                sequence_number: 7,
                timestamp: 160,
                ssrc: 42,
                ..Default::default()
            },
            payload: tone_payload(0, 0),
        };
        let bytes = pkt.marshal().unwrap();
        let back = parse_rtp(&bytes).unwrap();
        assert_eq!(back.header.sequence_number, 7);
        assert_eq!(back.payload.len(), 160);
        assert!(parse_rtp(b"").is_none());
        assert!(parse_rtp(b"\x00\x01\x02").is_none());
        let mut v1 = bytes.to_vec();
        v1[0] = (v1[0] & 0x3F) | 0x40; // version 1
        assert!(parse_rtp(&v1).is_none());
    }

    fn packet(ssrc: u32, pt: u8) -> Vec<u8> {
        rtp::packet::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: pt,
                sequence_number: 1,
                timestamp: 160,
                ssrc,
                ..Default::default()
            },
            payload: tone_payload(0, 0),
        }
        .marshal()
        .unwrap()
        .to_vec()
    }

    #[test]
    fn gate_locks_source_and_ssrc() {
        let peer: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let stranger: SocketAddr = "10.0.0.5:4002".parse().unwrap();
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut g = StreamGate::new(peer, false, [Some(0), Some(101)]);
        assert_eq!(
            g.judge(&packet(1, 0), stranger, ms(0)),
            Verdict::WrongSource
        );
        assert_eq!(g.judge(&packet(1, 0), peer, ms(0)), Verdict::Accept);
        assert_eq!(g.judge(&packet(1, 101), peer, ms(10)), Verdict::Accept);
        assert_eq!(g.judge(&packet(1, 8), peer, ms(10)), Verdict::Malformed);
        assert_eq!(g.judge(b"\x80", peer, ms(10)), Verdict::Malformed);
        // Another SSRC while the first still flows: refused.
        assert_eq!(g.judge(&packet(2, 0), peer, ms(20)), Verdict::WrongSsrc);
        assert_eq!(g.judge(&packet(1, 0), peer, ms(40)), Verdict::Accept);
        // The first went silent: the new one takes over, the old one is now foreign.
        assert_eq!(g.judge(&packet(2, 0), peer, ms(300)), Verdict::Accept);
        assert_eq!(g.judge(&packet(1, 0), peer, ms(310)), Verdict::WrongSsrc);
        // Re-negotiated to a new address.
        g.renegotiate(stranger, [Some(8), None]);
        assert_eq!(g.judge(&packet(3, 8), peer, ms(320)), Verdict::WrongSource);
        assert_eq!(g.judge(&packet(3, 8), stranger, ms(320)), Verdict::Accept);
    }

    #[test]
    fn latching_takes_the_first_source_only() {
        let sdp: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let nat: SocketAddr = "198.51.100.7:31000".parse().unwrap();
        let other: SocketAddr = "198.51.100.8:31000".parse().unwrap();
        let now = std::time::Instant::now();
        let mut g = StreamGate::new(sdp, true, [Some(0), None]);
        assert_eq!(g.send_to(sdp), sdp);
        assert_eq!(g.judge(&packet(1, 0), nat, now), Verdict::Accept);
        assert_eq!(g.send_to(sdp), nat);
        assert_eq!(g.judge(&packet(1, 0), other, now), Verdict::WrongSource);
    }

    #[test]
    fn port_ranges() {
        assert!(PortPool::parse("0").is_ok());
        assert!(PortPool::parse("20000-29999").is_ok());
        assert!(PortPool::parse("29999-20000").is_err());
        assert!(PortPool::parse("80-90").is_err());
        assert!(PortPool::parse("x").is_err());
    }

    #[tokio::test]
    async fn pool_skips_ports_in_use() {
        let pool = PortPool::parse("40000-40010").unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = pool.bind(ip).await.unwrap();
        let b = pool.bind(ip).await.unwrap();
        assert_ne!(
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port()
        );
        assert_eq!(a.local_addr().unwrap().port() % 2, 0);
    }
}
