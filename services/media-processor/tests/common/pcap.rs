//! Audio for SIPp to play (`play_pcap_audio`): RTP packets written into a
//! pcap file (Ethernet, IPv4, UDP), one per 20 ms, and a UAS scenario that
//! answers with telephone-event in its SDP and plays the file after ACK.

use std::path::{Path, PathBuf};

use dialstack_media::g711::Codec;

/// One RTP packet and when to send it (ms from the first).
pub struct Timed {
    pub at_ms: u32,
    pub rtp: Vec<u8>,
}

/// G.711 µ-law RTP packets of `pcm` (8 kHz), 20 ms each, starting at
/// `start_ms`, marker on the first.
pub fn ulaw_packets(pcm: &[i16], start_ms: u32, ssrc: u32, seq0: u16, ts0: u32) -> Vec<Timed> {
    pcm.chunks(160)
        .enumerate()
        .map(|(i, chunk)| {
            let mut frame = [0i16; 160];
            frame[..chunk.len()].copy_from_slice(chunk);
            let mut rtp = vec![0u8; 12 + 160];
            rtp[0] = 0x80;
            rtp[1] = if i == 0 { 0x80 } else { 0 };
            rtp[2..4].copy_from_slice(&seq0.wrapping_add(i as u16).to_be_bytes());
            rtp[4..8].copy_from_slice(&ts0.wrapping_add(i as u32 * 160).to_be_bytes());
            rtp[8..12].copy_from_slice(&ssrc.to_be_bytes());
            Codec::Pcmu.encode(&frame, &mut rtp[12..]);
            Timed {
                at_ms: start_ms + i as u32 * 20,
                rtp,
            }
        })
        .collect()
}

/// Writes `packets` as a pcap SIPp can replay.
pub fn write_pcap(path: &Path, packets: &[Timed]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for p in packets {
        let udp_len = 8 + p.rtp.len();
        let ip_len = 20 + udp_len;
        let mut frame = Vec::with_capacity(14 + ip_len);
        frame.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&40_000u16.to_be_bytes());
        frame.extend_from_slice(&40_002u16.to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&p.rtp);
        let secs = 1_700_000_000 + p.at_ms / 1_000;
        let micros = (p.at_ms % 1_000) * 1_000;
        out.extend_from_slice(&secs.to_le_bytes());
        out.extend_from_slice(&micros.to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    std::fs::write(path, out).unwrap();
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UAS scenario (written next to `pcap`) that answers with PCMU and
/// telephone-event 101, plays `pcap` after the ACK, and waits for our BYE.
pub fn play_scenario(pcap: &Path) -> PathBuf {
    let xml = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="dialstack test callee playing a pcap">
  <recv request="INVITE" />
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=callee 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15

    ]]>
  </send>
  <recv request="ACK" />
  <nop>
    <action>
      <exec play_pcap_audio="{}" />
    </action>
  </nop>
  <recv request="BYE" timeout="60000" />
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"#,
        pcap.display()
    );
    let path = pcap.with_extension("xml");
    std::fs::write(&path, xml).unwrap();
    path
}
