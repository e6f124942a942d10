//! SIP messages (RFC 3261): a lenient parser that refuses what it cannot
//! trust, and builders for the requests a user agent client sends.

use std::fmt::Write as _;

/// A parsed SIP request or response.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Request line or status line.
    pub start: StartLine,
    /// Headers in order, names in their long lower-case form.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: String,
}

/// The first line.
#[derive(Debug, Clone, PartialEq)]
pub enum StartLine {
    /// `METHOD uri SIP/2.0`
    Request {
        /// Method.
        method: String,
        /// Request-URI.
        uri: String,
    },
    /// `SIP/2.0 code reason`
    Response {
        /// Status code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// Why a datagram is not a usable SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed sip message: {reason}")]
pub struct ParseError {
    /// What is wrong.
    pub reason: String,
    /// The Call-ID, when one could be read despite the error.
    pub call_id: Option<String>,
}

fn long_name(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    match n.as_str() {
        "v" => "via".into(),
        "f" => "from".into(),
        "t" => "to".into(),
        "i" => "call-id".into(),
        "m" => "contact".into(),
        "l" => "content-length".into(),
        "c" => "content-type".into(),
        _ => n,
    }
}

/// Reads a Call-ID from raw bytes without trusting anything else.
pub fn sniff_call_id(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        (long_name(name) == "call-id").then(|| value.trim().to_owned())
    })
}

impl Message {
    /// Parses one datagram.
    pub fn parse(raw: &[u8]) -> Result<Self, ParseError> {
        let fail = |reason: &str| ParseError {
            reason: reason.to_owned(),
            call_id: sniff_call_id(raw),
        };
        let text = std::str::from_utf8(raw).map_err(|_| fail("not UTF-8"))?;
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i], &text[i + 4..]),
            None => match text.find("\n\n") {
                Some(i) => (&text[..i], &text[i + 2..]),
                None => return Err(fail("no end of headers")),
            },
        };
        let mut lines = head.lines();
        let first = lines.next().ok_or_else(|| fail("empty message"))?.trim();
        let start = if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            let code: u16 = code
                .parse()
                .ok()
                .filter(|c| (100..700).contains(c))
                .ok_or_else(|| fail("bad status code"))?;
            StartLine::Response {
                code,
                reason: reason.to_owned(),
            }
        } else {
            let mut parts = first.split(' ');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(m), Some(uri), Some("SIP/2.0"), None)
                    if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) =>
                {
                    StartLine::Request {
                        method: m.to_owned(),
                        uri: uri.to_owned(),
                    }
                }
                _ => return Err(fail("bad start line")),
            }
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with(' ') || line.starts_with('\t') {
                // Folded continuation of the previous header.
                match headers.last_mut() {
                    Some((_, v)) => {
                        v.push(' ');
                        v.push_str(line.trim());
                    }
                    None => return Err(fail("continuation without header")),
                }
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| fail("header without ':'"))?;
            if name.trim().is_empty() {
                return Err(fail("empty header name"));
            }
            headers.push((long_name(name), value.trim().to_owned()));
        }
        let msg = Self {
            start,
            headers,
            body: String::new(),
        };
        for required in ["call-id", "cseq", "from", "to", "via"] {
            if msg.header(required).is_none() {
                return Err(fail(&format!("missing {required}")));
            }
        }
        msg.cseq().ok_or_else(|| fail("bad cseq"))?;
        let len = match msg.header("content-length") {
            Some(l) => l
                .trim()
                .parse::<usize>()
                .map_err(|_| fail("bad content-length"))?,
            None => body.len(),
        };
        if len > body.len() {
            return Err(fail("body shorter than content-length"));
        }
        Ok(Self {
            body: body[..len].to_owned(),
            ..msg
        })
    }

    /// First value of a header (long lower-case name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &str {
        self.header("call-id").unwrap_or("")
    }

    /// `CSeq` number and method.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("cseq")?;
        let mut it = v.split_whitespace();
        let n = it.next()?.parse().ok()?;
        let m = it.next()?.to_owned();
        Some((n, m))
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The `tag` parameter of the To header.
    pub fn to_tag(&self) -> Option<String> {
        tag_of(self.header("to")?)
    }

    /// The URI inside the Contact header.
    pub fn contact_uri(&self) -> Option<String> {
        uri_of(self.header("contact")?)
    }
}

/// The `tag=` parameter of a From/To value.
pub fn tag_of(v: &str) -> Option<String> {
    let after = match v.rfind('>') {
        Some(i) => &v[i..],
        None => v,
    };
    after
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag=").map(str::to_owned))
}

/// The URI of a name-addr or addr-spec.
pub fn uri_of(v: &str) -> Option<String> {
    if let (Some(a), Some(b)) = (v.find('<'), v.find('>')) {
        if a < b {
            return Some(v[a + 1..b].to_owned());
        }
    }
    v.split(';')
        .next()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The dialog and transaction identifiers of one outgoing call.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag, once known.
    pub remote_tag: Option<String>,
    /// `sip:` URI of the callee.
    pub remote_uri: String,
    /// Where in-dialog requests go (the 2xx Contact), once known.
    pub remote_target: Option<String>,
    /// Our address-of-record URI.
    pub local_uri: String,
    /// Our contact (`sip:user@ip:port`).
    pub contact: String,
    /// `ip:port` for Via.
    pub via_host: String,
    /// CSeq of the INVITE.
    pub invite_cseq: u32,
    /// Via branch of the INVITE.
    pub invite_branch: String,
}

/// A fresh RFC 3261 branch.
pub fn new_branch() -> String {
    format!("z9hG4bK{}", uuid::Uuid::new_v4().simple())
}

impl Dialog {
    fn common(
        &self,
        out: &mut String,
        method: &str,
        cseq: u32,
        branch: &str,
        to_tag: Option<&str>,
    ) {
        let _ = write!(
            out,
            "Via: SIP/2.0/UDP {};branch={};rport\r\n",
            self.via_host, branch
        );
        let _ = write!(out, "Max-Forwards: 70\r\n");
        let _ = write!(out, "From: <{}>;tag={}\r\n", self.local_uri, self.local_tag);
        match to_tag {
            Some(t) => {
                let _ = write!(out, "To: <{}>;tag={}\r\n", self.remote_uri, t);
            }
            None => {
                let _ = write!(out, "To: <{}>\r\n", self.remote_uri);
            }
        }
        let _ = write!(out, "Call-ID: {}\r\n", self.call_id);
        let _ = write!(out, "CSeq: {cseq} {method}\r\n");
    }

    /// The INVITE with an SDP offer.
    pub fn invite(&self, sdp: &str) -> String {
        let mut out = format!("INVITE {} SIP/2.0\r\n", self.remote_uri);
        self.common(
            &mut out,
            "INVITE",
            self.invite_cseq,
            &self.invite_branch,
            None,
        );
        let _ = write!(out, "Contact: <{}>\r\n", self.contact);
        out.push_str("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n");
        out.push_str("User-Agent: dialstack\r\n");
        out.push_str("Content-Type: application/sdp\r\n");
        let _ = write!(out, "Content-Length: {}\r\n\r\n{sdp}", sdp.len());
        out
    }

    /// ACK of a non-2xx final response: same branch as the INVITE.
    pub fn ack_non2xx(&self, to_tag: Option<&str>) -> String {
        let mut out = format!("ACK {} SIP/2.0\r\n", self.remote_uri);
        self.common(
            &mut out,
            "ACK",
            self.invite_cseq,
            &self.invite_branch,
            to_tag,
        );
        out.push_str("Content-Length: 0\r\n\r\n");
        out
    }

    /// ACK of a 2xx: its own transaction, to the remote target.
    pub fn ack_2xx(&self) -> String {
        let target = self.remote_target.as_deref().unwrap_or(&self.remote_uri);
        let mut out = format!("ACK {target} SIP/2.0\r\n");
        self.common(
            &mut out,
            "ACK",
            self.invite_cseq,
            &new_branch(),
            self.remote_tag.as_deref(),
        );
        out.push_str("Content-Length: 0\r\n\r\n");
        out
    }

    /// CANCEL of the pending INVITE.
    pub fn cancel(&self) -> String {
        let mut out = format!("CANCEL {} SIP/2.0\r\n", self.remote_uri);
        self.common(
            &mut out,
            "CANCEL",
            self.invite_cseq,
            &self.invite_branch,
            None,
        );
        out.push_str("Content-Length: 0\r\n\r\n");
        out
    }

    /// BYE with `branch`, CSeq after the INVITE's.
    pub fn bye(&self, branch: &str) -> String {
        let target = self.remote_target.as_deref().unwrap_or(&self.remote_uri);
        let mut out = format!("BYE {target} SIP/2.0\r\n");
        self.common(
            &mut out,
            "BYE",
            self.invite_cseq + 1,
            branch,
            self.remote_tag.as_deref(),
        );
        out.push_str("Content-Length: 0\r\n\r\n");
        out
    }
}

/// A response to an incoming request, copying its Via, From, To, Call-ID and
/// CSeq; adds our tag to To when it has none.
pub fn response_to(
    req: &Message,
    code: u16,
    reason: &str,
    local_tag: Option<&str>,
    extra: &str,
    body: &str,
) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for v in req.headers_named("via") {
        let _ = write!(out, "Via: {v}\r\n");
    }
    if let Some(f) = req.header("from") {
        let _ = write!(out, "From: {f}\r\n");
    }
    if let Some(t) = req.header("to") {
        match (tag_of(t), local_tag) {
            (None, Some(tag)) => {
                let _ = write!(out, "To: {t};tag={tag}\r\n");
            }
            _ => {
                let _ = write!(out, "To: {t}\r\n");
            }
        }
    }
    let _ = write!(out, "Call-ID: {}\r\n", req.call_id());
    if let Some(c) = req.header("cseq") {
        let _ = write!(out, "CSeq: {c}\r\n");
    }
    out.push_str(extra);
    let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
    out
}

/// The SDP offer: G.711 µ-law (0) and A-law (8), telephone-event (101), 20 ms.
pub fn sdp_offer(ip: std::net::IpAddr, rtp_port: u16, session_id: u64) -> String {
    format!(
        "v=0\r\no=dialstack {session_id} {session_id} IN IP4 {ip}\r\ns=dialstack\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
m=audio {rtp_port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// What an SDP answer says about where to send audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdpAnswer {
    /// Remote RTP address.
    pub addr: std::net::SocketAddr,
    /// Chosen payload type (0 or 8).
    pub payload_type: u8,
}

/// Reads the connection address, audio port and first G.711 payload type of an
/// SDP answer.
pub fn parse_sdp_answer(sdp: &str) -> Result<SdpAnswer, String> {
    let mut ip: Option<std::net::IpAddr> = None;
    let mut media: Option<(u16, Vec<u8>)> = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(c) = line.strip_prefix("c=") {
            let addr = c.split_whitespace().nth(2).ok_or("bad c= line")?;
            let parsed = addr.parse().map_err(|_| format!("bad address {addr:?}"))?;
            // Session-level c= unless a media-level one follows.
            ip = Some(parsed);
        } else if let Some(m) = line.strip_prefix("m=audio ") {
            let mut it = m.split_whitespace();
            let port: u16 = it
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or("bad m= port")?;
            let _proto = it.next();
            let pts = it.filter_map(|p| p.parse().ok()).collect();
            media = Some((port, pts));
        }
    }
    let ip = ip.ok_or("no c= line")?;
    let (port, pts) = media.ok_or("no m=audio line")?;
    if port == 0 {
        return Err("audio stream refused (port 0)".into());
    }
    let payload_type = pts
        .into_iter()
        .find(|p| *p == 0 || *p == 8)
        .ok_or("no G.711 payload type in answer")?;
    Ok(SdpAnswer {
        addr: std::net::SocketAddr::new(ip, port),
        payload_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=abc\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:b@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn parses_a_response() {
        let m = Message::parse(OK.as_bytes()).unwrap();
        assert_eq!(m.status(), Some(200));
        assert_eq!(m.call_id(), "c1");
        assert_eq!(m.cseq(), Some((1, "INVITE".into())));
        assert_eq!(m.to_tag().as_deref(), Some("abc"));
        assert_eq!(m.contact_uri().as_deref(), Some("sip:b@127.0.0.1:5070"));
        assert_eq!(m.body, "v=0\n");
    }

    #[test]
    fn compact_headers_and_requests() {
        let raw = "BYE sip:a@1.2.3.4 SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:b@y>;tag=9\r\nt: <sip:a@x>;tag=1\r\ni: c9\r\nCSeq: 2 BYE\r\nl: 0\r\n\r\n";
        let m = Message::parse(raw.as_bytes()).unwrap();
        assert_eq!(m.method(), Some("BYE"));
        assert_eq!(m.call_id(), "c9");
        let resp = response_to(&m, 200, "OK", None, "", "");
        let back = Message::parse(resp.as_bytes()).unwrap();
        assert_eq!(back.status(), Some(200));
        assert_eq!(back.cseq(), Some((2, "BYE".into())));
    }

    #[test]
    fn malformed_messages_are_refused_with_the_call_id_when_readable() {
        let cases: &[&[u8]] = &[
            b"",
            b"garbage",
            b"SIP/2.0 abc OK\r\nCall-ID: c1\r\n\r\n",
            b"SIP/2.0 999 Weird\r\nCall-ID: c1\r\n\r\n",
            b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nCSeq: x INVITE\r\nFrom: a\r\nTo: b\r\nVia: v\r\n\r\n",
            b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nFrom: a\r\nTo: b\r\nVia: v\r\nContent-Length: 99\r\n\r\nshort",
            b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nno colon here\r\n\r\n",
            b"\xff\xfe\x00",
            b"invite sip:x SIP/2.0\r\nCall-ID: c1\r\n\r\n",
        ];
        for raw in cases {
            let err = Message::parse(raw).unwrap_err();
            if raw.starts_with(b"SIP/2.0") || raw.starts_with(b"invite") {
                assert_eq!(err.call_id.as_deref(), Some("c1"), "{err:?}");
            }
        }
    }

    #[test]
    fn builds_requests_that_parse_back() {
        let d = Dialog {
            call_id: "c1".into(),
            local_tag: "t1".into(),
            remote_tag: Some("r1".into()),
            remote_uri: "sip:+14155550101@127.0.0.1:5080".into(),
            remote_target: Some("sip:b@127.0.0.1:5080".into()),
            local_uri: "sip:+14155550100@127.0.0.1".into(),
            contact: "sip:dialstack@127.0.0.1:5060".into(),
            via_host: "127.0.0.1:5060".into(),
            invite_cseq: 1,
            invite_branch: new_branch(),
        };
        let sdp = sdp_offer("127.0.0.1".parse().unwrap(), 20000, 1);
        for raw in [
            d.invite(&sdp),
            d.ack_2xx(),
            d.ack_non2xx(Some("r1")),
            d.cancel(),
            d.bye(&new_branch()),
        ] {
            let m = Message::parse(raw.as_bytes()).unwrap();
            assert_eq!(m.call_id(), "c1");
        }
        let inv = Message::parse(d.invite(&sdp).as_bytes()).unwrap();
        assert_eq!(inv.body, sdp);
        let bye = Message::parse(d.bye("z9hG4bKb").as_bytes()).unwrap();
        assert_eq!(bye.cseq(), Some((2, "BYE".into())));
        assert!(
            matches!(bye.start, StartLine::Request { ref uri, .. } if uri == "sip:b@127.0.0.1:5080")
        );
    }

    #[test]
    fn sdp_answers() {
        let a =
            parse_sdp_answer("v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 4000 RTP/AVP 8 101\r\n").unwrap();
        assert_eq!(a.addr, "10.0.0.5:4000".parse().unwrap());
        assert_eq!(a.payload_type, 8);
        assert!(parse_sdp_answer("v=0\r\nm=audio 4000 RTP/AVP 0\r\n").is_err());
        assert!(parse_sdp_answer("c=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n").is_err());
        assert!(parse_sdp_answer("c=IN IP4 1.2.3.4\r\nm=audio 9 RTP/AVP 18\r\n").is_err());
        assert!(parse_sdp_answer("c=IN IP4 nope\r\nm=audio 9 RTP/AVP 0\r\n").is_err());
    }
}
