//! RTP for answered calls: G.711 encoding, the port pool, and the per-call
//! loop that sends a 20 ms packet every 20 ms and counts what it receives.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use webrtc_util::marshal::{Marshal, Unmarshal};

/// Samples per 20 ms packet at 8 kHz.
pub const SAMPLES_PER_PACKET: usize = 160;

/// G.711 µ-law encoding of one 16-bit linear sample.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 as i32 | mantissa) as u8
}

/// G.711 A-law encoding of one 16-bit linear sample.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s >= 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s - 1;
    }
    s = s.min(32_767) >> 3;
    let out = if s < 32 {
        (s >> 1) as u8
    } else {
        let exponent = (31 - (s as u32).leading_zeros()) as i32 - 4;
        ((exponent << 4) | ((s >> exponent) & 0x0F)) as u8
    };
    (out | sign) ^ 0x55
}

/// One 20 ms packet of a 425 Hz tone (the European ring-back pitch) at a low
/// level, encoded for `payload_type` (0 µ-law, 8 A-law), starting at sample `n`.
pub fn tone_payload(payload_type: u8, n: u64) -> Bytes {
    let mut out = Vec::with_capacity(SAMPLES_PER_PACKET);
    for i in 0..SAMPLES_PER_PACKET as u64 {
        let t = (n + i) as f64 / 8_000.0;
        let v = (2_000.0 * (2.0 * std::f64::consts::PI * 425.0 * t).sin()) as i16;
        out.push(if payload_type == 8 {
            linear_to_alaw(v)
        } else {
            linear_to_ulaw(v)
        });
    }
    Bytes::from(out)
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
}

/// Packet counts of one call.
#[derive(Debug, Default)]
pub struct RtpStats {
    /// Packets sent.
    pub sent: AtomicU64,
    /// Valid RTP packets received.
    pub received: AtomicU64,
    /// Datagrams that were not RTP.
    pub malformed: AtomicU64,
}

/// Parses one datagram as RTP; `None` when it is not a valid RTP packet.
pub fn parse_rtp(buf: &[u8]) -> Option<rtp::packet::Packet> {
    let mut b = buf;
    let pkt = rtp::packet::Packet::unmarshal(&mut b).ok()?;
    (pkt.header.version == 2).then_some(pkt)
}

/// Sends a packet every 20 ms to `remote` and counts what arrives, until `stop`.
pub async fn run_stream(
    sock: Arc<UdpSocket>,
    remote: SocketAddr,
    payload_type: u8,
    stats: Arc<RtpStats>,
    stop: CancellationToken,
) {
    let ssrc = fastrand::u32(..);
    let mut seq = fastrand::u16(..);
    let mut ts = fastrand::u32(..);
    let mut samples = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 2048];
    let mut first = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let pkt = rtp::packet::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        marker: first,
                        payload_type,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc,
                        ..Default::default()
                    },
                    payload: tone_payload(payload_type, samples),
                };
                first = false;
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(SAMPLES_PER_PACKET as u32);
                samples += SAMPLES_PER_PACKET as u64;
                if let Ok(bytes) = pkt.marshal() {
                    if sock.send_to(&bytes, remote).await.is_ok() {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            r = sock.recv_from(&mut buf) => {
                if let Ok((n, _)) = r {
                    if parse_rtp(&buf[..n]).is_some() {
                        stats.received.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_reference_points() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(32_767), 0x80);
        assert_eq!(linear_to_ulaw(-32_768), 0x00);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(32_767), 0xAA);
        assert_eq!(tone_payload(0, 0).len(), SAMPLES_PER_PACKET);
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
