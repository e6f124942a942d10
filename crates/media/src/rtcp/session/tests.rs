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
            if elapsed >= me.first_report_us && (elapsed - me.first_report_us) % interval_us == 0 {
                let peer = Some(me.peer_ssrc);
                let buf = me.session.build_report(now, rtp_ts, Some(&mut me.rx), peer);
                out.push_back((t + one_way_us, Msg::Rtcp(buf)));
            }
        }
        for (me, inbox, from_ssrc) in [(&mut *b, &mut to_b, A_SSRC), (&mut *a, &mut to_a, B_SSRC)] {
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
