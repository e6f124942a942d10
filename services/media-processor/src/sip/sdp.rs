//! SDP (RFC 4566) as an offer/answer user agent needs it (RFC 3264): our
//! offer, the peer's answer or re-offer (address, port, G.711 payload type,
//! direction), and our answer to a re-offer with the session version bumped.

use std::net::{IpAddr, SocketAddr};

/// Media direction of a stream (RFC 3264 §5.1), from the sender's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways.
    SendRecv,
    /// The SDP's author only sends (puts us on hold with music, say).
    SendOnly,
    /// The SDP's author only receives.
    RecvOnly,
    /// Neither (hold).
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// What we answer to an offer with this direction.
    pub fn answer(self) -> Self {
        match self {
            Self::SendRecv => Self::SendRecv,
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            Self::Inactive => Self::Inactive,
        }
    }

    /// Whether we may send audio when the peer's SDP says this.
    pub fn peer_receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }
}

/// What the peer's SDP says about its audio stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteMedia {
    /// Where to send RTP (IP 0.0.0.0 is the old-style hold).
    pub addr: SocketAddr,
    /// Chosen payload type (0 or 8).
    pub payload_type: u8,
    /// RFC 4733 telephone-event payload type, when offered.
    pub dtmf_payload_type: Option<u8>,
    /// The stream's direction.
    pub direction: Direction,
}

impl RemoteMedia {
    /// Whether we may send audio to the peer now.
    pub fn sending_allowed(&self) -> bool {
        self.direction.peer_receives() && !self.addr.ip().is_unspecified()
    }
}

/// Our side of the session: kept per call, so each new SDP we send has the
/// same origin and a higher version (RFC 3264 §8).
#[derive(Debug, Clone)]
pub struct LocalSdp {
    /// Address in `o=` and `c=`.
    pub ip: IpAddr,
    /// RTP port.
    pub port: u16,
    /// `o=` session id.
    pub session_id: u64,
    /// `o=` version, bumped for each new description.
    pub version: u64,
}

impl LocalSdp {
    /// Our offer: G.711 µ-law (0) and A-law (8), telephone-event (101), 20 ms.
    pub fn offer(&self) -> String {
        self.render(&[0, 8], Some(101), Direction::SendRecv)
    }

    /// Our answer to `remote`'s offer: its codec, the mirrored direction,
    /// a new version.
    pub fn answer(&mut self, remote: &RemoteMedia) -> String {
        self.version += 1;
        self.render(
            &[remote.payload_type],
            remote.dtmf_payload_type,
            remote.direction.answer(),
        )
    }

    /// Our current description again, version bumped (a re-offer or a reply
    /// to an offerless re-INVITE).
    pub fn reoffer(&mut self) -> String {
        self.version += 1;
        self.offer()
    }

    fn render(&self, pts: &[u8], dtmf: Option<u8>, dir: Direction) -> String {
        use std::fmt::Write as _;
        let (ip, v) = (self.ip, if self.ip.is_ipv4() { "IP4" } else { "IP6" });
        let mut fmts: Vec<String> = pts.iter().map(u8::to_string).collect();
        if let Some(d) = dtmf {
            fmts.push(d.to_string());
        }
        let mut out = format!(
            "v=0\r\no=dialstack {} {} IN {v} {ip}\r\ns=dialstack\r\nc=IN {v} {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP {}\r\n",
            self.session_id,
            self.version,
            self.port,
            fmts.join(" ")
        );
        for pt in pts {
            let name = if *pt == 8 { "PCMA" } else { "PCMU" };
            let _ = write!(out, "a=rtpmap:{pt} {name}/8000\r\n");
        }
        if let Some(d) = dtmf {
            let _ = write!(
                out,
                "a=rtpmap:{d} telephone-event/8000\r\na=fmtp:{d} 0-16\r\n"
            );
        }
        let _ = write!(out, "a=ptime:20\r\na={}\r\n", dir.as_str());
        out
    }
}

/// Reads the peer's audio stream from an SDP answer or offer: connection
/// address (media-level wins over session-level), port, the first G.711
/// payload type, telephone-event and direction.
pub fn parse_remote(sdp: &str) -> Result<RemoteMedia, &'static str> {
    let mut session_ip: Option<IpAddr> = None;
    let mut media_ip: Option<IpAddr> = None;
    let mut session_dir = Direction::SendRecv;
    let mut media_dir: Option<Direction> = None;
    let mut audio: Option<(u16, Vec<u8>)> = None;
    let mut in_audio = false;
    let mut seen_audio = false;
    let mut dtmf: Option<u8> = None;
    for line in sdp.lines().map(str::trim).take(200) {
        if let Some(m) = line.strip_prefix("m=") {
            // Only the first audio stream is used.
            in_audio = m.starts_with("audio ") && !seen_audio;
            if in_audio {
                seen_audio = true;
                let mut it = m["audio ".len()..].split_whitespace();
                let port: u16 = it
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse().ok())
                    .ok_or("bad m= port")?;
                let _proto = it.next().ok_or("m= line without protocol")?;
                let pts = it.filter_map(|p| p.parse().ok()).take(32).collect();
                audio = Some((port, pts));
            }
            continue;
        }
        if let Some(c) = line.strip_prefix("c=") {
            let addr = c.split_whitespace().nth(2).ok_or("bad c= line")?;
            let addr = addr.split('/').next().unwrap_or(addr);
            let parsed: IpAddr = addr.parse().map_err(|_| "bad c= address")?;
            if in_audio {
                media_ip = Some(parsed);
            } else if !seen_audio {
                session_ip = Some(parsed);
            }
            continue;
        }
        let dir = match line {
            "a=sendrecv" => Some(Direction::SendRecv),
            "a=sendonly" => Some(Direction::SendOnly),
            "a=recvonly" => Some(Direction::RecvOnly),
            "a=inactive" => Some(Direction::Inactive),
            _ => None,
        };
        if let Some(d) = dir {
            if in_audio {
                media_dir = Some(d);
            } else if !seen_audio {
                session_dir = d;
            }
            continue;
        }
        if in_audio {
            if let Some(rest) = line.strip_prefix("a=rtpmap:") {
                if let Some((pt, enc)) = rest.split_once(' ') {
                    if enc.to_ascii_lowercase().starts_with("telephone-event/8000") {
                        dtmf = pt.trim().parse().ok();
                    }
                }
            }
        }
    }
    let ip = media_ip.or(session_ip).ok_or("no c= line")?;
    let (port, pts) = audio.ok_or("no m=audio line")?;
    if port == 0 {
        return Err("audio stream refused (port 0)");
    }
    let payload_type = pts
        .iter()
        .copied()
        .find(|p| *p == 0 || *p == 8)
        .ok_or("no G.711 payload type")?;
    Ok(RemoteMedia {
        addr: SocketAddr::new(ip, port),
        payload_type,
        dtmf_payload_type: dtmf.filter(|d| pts.contains(d)),
        direction: media_dir.unwrap_or(session_dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_media() {
        let a = parse_remote(
            "v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 4000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        )
        .unwrap();
        assert_eq!(a.addr, "10.0.0.5:4000".parse().unwrap());
        assert_eq!(a.payload_type, 8);
        assert_eq!(a.dtmf_payload_type, Some(101));
        assert_eq!(a.direction, Direction::SendRecv);
        let held = parse_remote(
            "v=0\r\nc=IN IP4 10.0.0.5\r\na=sendonly\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 10.0.0.6\r\n",
        )
        .unwrap();
        assert_eq!(held.direction, Direction::SendOnly);
        assert_eq!(held.addr.ip(), "10.0.0.6".parse::<IpAddr>().unwrap());
        assert!(!held.sending_allowed());
        let old_hold = parse_remote("c=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n").unwrap();
        assert!(!old_hold.sending_allowed());
        for bad in [
            "v=0\r\nm=audio 4000 RTP/AVP 0\r\n",
            "c=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n",
            "c=IN IP4 1.2.3.4\r\nm=audio 9 RTP/AVP 18\r\n",
            "c=IN IP4 nope\r\nm=audio 9 RTP/AVP 0\r\n",
            "c=IN IP4 1.2.3.4\r\nm=audio 99999 RTP/AVP 0\r\n",
            "c=IN IP4 1.2.3.4\r\nm=video 9 RTP/AVP 0\r\n",
            "c=\r\nm=audio 9 RTP/AVP 0\r\n",
        ] {
            assert!(parse_remote(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answers_mirror_direction_and_bump_the_version() {
        let mut local = LocalSdp {
            ip: "192.0.2.1".parse().unwrap(),
            port: 20000,
            session_id: 7,
            version: 7,
        };
        let offer = local.offer();
        let mine = parse_remote(&offer).unwrap();
        assert_eq!(mine.addr, "192.0.2.1:20000".parse().unwrap());
        assert_eq!(mine.payload_type, 0);
        let hold = RemoteMedia {
            direction: Direction::SendOnly,
            ..mine
        };
        let ans = local.answer(&hold);
        assert!(ans.contains("o=dialstack 7 8 IN IP4"), "{ans}");
        assert_eq!(parse_remote(&ans).unwrap().direction, Direction::RecvOnly);
        let again = local.reoffer();
        assert!(again.contains("o=dialstack 7 9 "), "{again}");
    }
}
