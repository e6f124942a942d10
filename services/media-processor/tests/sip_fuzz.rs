//! Seeded mutation fuzzing of everything the SIP edge reads from the
//! network: the message parser, the transport's dispatch (with a live call
//! registered, so mutants reach a call's queue), the dialog checks, SDP and
//! Digest challenges. A stable-toolchain stand-in for cargo-fuzz: real
//! messages are mutated (bit flips, byte edits, splices, truncation,
//! duplicated and oversized headers, lying Content-Length, multi-byte
//! characters at the cut) and nothing may panic, and the transport's
//! memory (its call table and queues) stays bounded.
//!
//! `DIALSTACK_FUZZ_ITERATIONS` sets the count (default 100,000 here;
//! `scripts/bench-sip-fuzz.sh` runs 10 million and reports the rate).

use std::net::SocketAddr;
use std::time::Instant;

use media_processor::sip::dialog::Dialog;
use media_processor::sip::digest::Challenge;
use media_processor::sip::message::Message;
use media_processor::sip::sdp::parse_remote;
use media_processor::sip::transport::DropReason;
use media_processor::sip::{SipMetrics, SipTransport};

const SDP: &str = "v=0\r\no=callee 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n";

fn corpus(call_id: &str) -> Vec<Vec<u8>> {
    let via = "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKfuzz;rport";
    let dialog =
        format!("From: <sip:a@x>;tag=local\r\nTo: <sip:b@y>;tag=remote\r\nCall-ID: {call_id}\r\n");
    vec![
        format!("INVITE sip:+14155550101@127.0.0.1 SIP/2.0\r\n{via}\r\nMax-Forwards: 70\r\nFrom: <sip:a@x>;tag=local\r\nTo: <sip:b@y>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:dialstack@127.0.0.1:5060>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}", SDP.len()),
        format!("SIP/2.0 200 OK\r\n{via}\r\n{dialog}CSeq: 1 INVITE\r\nContact: <sip:callee@127.0.0.1:5080>\r\nRecord-Route: <sip:p1.example.net;lr>, <sip:p2.example.net;lr>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}", SDP.len()),
        format!("SIP/2.0 401 Unauthorized\r\n{via}\r\n{dialog}CSeq: 1 INVITE\r\nWWW-Authenticate: Digest realm=\"r\", nonce=\"abc\", qop=\"auth,auth-int\", algorithm=SHA-256, opaque=\"o\"\r\nContent-Length: 0\r\n\r\n"),
        format!("SIP/2.0 180 Ringing\r\n{via}\r\n{dialog}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"),
        format!("BYE sip:dialstack@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKbye\r\nFrom: <sip:b@y>;tag=remote\r\nTo: <sip:a@x>;tag=local\r\nCall-ID: {call_id}\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n"),
        format!("INVITE sip:dialstack@127.0.0.1:5060 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKre\r\nf: <sip:b@y>;tag=remote\r\nt: <sip:a@x>;tag=local\r\ni: {call_id}\r\nCSeq: 8 INVITE\r\nc: application/sdp\r\nl: {}\r\n\r\n{SDP}", SDP.len()),
        b"\r\n\r\n".iter().map(|b| *b as char).collect(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut d = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..5) {
        if d.is_empty() {
            d.push(rng.u8(..));
        }
        match rng.u8(..12) {
            0 => {
                let i = rng.usize(..d.len());
                d[i] ^= 1 << rng.u8(..8);
            }
            1 => {
                let i = rng.usize(..d.len());
                d[i] = rng.u8(..);
            }
            2 => {
                let i = rng.usize(..=d.len());
                d.insert(i, rng.u8(..));
            }
            3 => {
                let i = rng.usize(..d.len());
                d.remove(i);
            }
            4 => d.truncate(rng.usize(..=d.len())),
            5 => {
                // Splice in a piece of another message.
                let other = &corpus[rng.usize(..corpus.len())];
                if !other.is_empty() {
                    let a = rng.usize(..other.len());
                    let b = rng.usize(a..=other.len());
                    let at = rng.usize(..=d.len());
                    d.splice(at..at, other[a..b].iter().copied());
                }
            }
            6 => {
                // A multi-byte character somewhere (the old panic).
                let at = rng.usize(..=d.len());
                d.splice(at..at, "é€𝄞".bytes());
            }
            7 => {
                let text = String::from_utf8_lossy(&d).replace(
                    "Content-Length: ",
                    &format!("Content-Length: {}", rng.u32(..100_000)),
                );
                d = text.into_bytes();
            }
            8 => {
                // A header repeated many times.
                let line = b"Via: SIP/2.0/UDP h;branch=z9hG4bKdup\r\n";
                let at = d.windows(2).position(|w| w == b"\r\n").map_or(0, |p| p + 2);
                for _ in 0..rng.usize(1..200) {
                    d.splice(at..at, line.iter().copied());
                }
            }
            9 => {
                // A very long header value.
                let at = d.windows(2).position(|w| w == b"\r\n").map_or(0, |p| p + 2);
                let mut long = b"X-Long: ".to_vec();
                long.extend(std::iter::repeat_n(b'a', rng.usize(..70_000)));
                long.extend_from_slice(b"\r\n");
                d.splice(at..at, long);
            }
            10 => {
                let text = String::from_utf8_lossy(&d).replace("\r\n", "\n");
                d = text.into_bytes();
            }
            _ => {
                // Random noise of a datagram's size.
                d = (0..rng.usize(..1500)).map(|_| rng.u8(..)).collect();
            }
        }
    }
    d
}

fn exercise(msg: &Message, dialog: &mut Dialog) {
    let _ = (
        msg.call_id(),
        msg.cseq(),
        msg.top_branch(),
        msg.to_tag(),
        msg.from_tag(),
    );
    let _ = msg.contact_uri();
    let _ = msg.header_values("record-route").count();
    if let Some(body) = msg.body_str() {
        let _ = parse_remote(body);
    }
    let _ = Challenge::pick(msg.header_values_raw("www-authenticate"));
    if msg.method().is_some() {
        let _ = dialog.check_request(msg);
    } else {
        let _ = dialog.matches_invite(msg);
        let mut d = dialog.clone();
        d.confirm(msg);
        let _ = (d.next_hop_uri(), d.ack_2xx(), d.bye(None));
    }
}

#[tokio::test]
async fn mutated_messages_never_panic_and_memory_stays_bounded() {
    let iterations: u64 = std::env::var("DIALSTACK_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("DIALSTACK_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let trunk: SocketAddr = "127.0.0.1:5080".parse().unwrap();
    let stranger: SocketAddr = "127.0.0.1:6666".parse().unwrap();
    let transport = SipTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        vec![trunk],
        SipMetrics::new(),
    )
    .await
    .unwrap();
    let call_id = "fuzz-call-1";
    let mut queue = transport.register(call_id);
    let corpus = corpus(call_id);
    for raw in &corpus[..6] {
        assert!(
            Message::parse(raw).is_ok(),
            "corpus parses: {}",
            String::from_utf8_lossy(raw)
        );
    }
    let mut dialog = Dialog::new(
        call_id,
        "sip:+14155550101@127.0.0.1:5080".into(),
        "sip:+14155550100@127.0.0.1".into(),
        "sip:dialstack@127.0.0.1:5060".into(),
        "127.0.0.1:5060".into(),
        "UDP",
    );
    dialog.local_tag = "local".into();
    dialog.remote_tag = Some("remote".into());
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let (mut parsed, mut routed) = (0u64, 0u64);
    for i in 0..iterations {
        let d = mutate(&mut rng, &corpus);
        if let Ok(msg) = Message::parse(&d) {
            parsed += 1;
            exercise(&msg, &mut dialog);
        }
        if i % 8 == 0 {
            let from = if i % 16 == 0 { trunk } else { stranger };
            transport.handle_datagram(&d, from).await;
            // The call reads its queue now and then; the rest is dropped as overload.
            if i % 64 == 0 {
                while let Ok(_m) = queue.try_recv() {
                    routed += 1;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let m = transport.metrics();
    let dropped: u64 = DropReason::ALL.iter().map(|r| m.dropped(*r)).sum();
    println!(
        "fuzz: {iterations} executions in {elapsed:?} ({:.0}/s), {parsed} parsed, {routed} routed to the call, {dropped} dropped by the transport",
        iterations as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(transport.active(), 1, "no call entries created by traffic");
    assert!(dropped > 0 && parsed > 0);
    assert!(
        m.dropped(DropReason::UnknownSource) > 0,
        "strangers' messages for the live call dropped"
    );
}

#[test]
fn arbitrary_bytes_never_panic_the_parsers() {
    let mut rng = fastrand::Rng::with_seed(42);
    for _ in 0..100_000 {
        let len = rng.usize(..600);
        let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        let _ = Message::parse(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_remote(&text);
        let _ = Challenge::parse(&text);
        let _ = Challenge::parse(&format!("Digest {text}"));
        let _ = media_processor::sip::dialog::host_port(&text);
        let _ = media_processor::sip::transport::sniff_call_id(&bytes);
        let _ = media_processor::rtp::parse_rtp(&bytes);
    }
}
