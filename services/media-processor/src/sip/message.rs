//! SIP messages (RFC 3261 §7): a strict, bounded parser for what arrives
//! from the network, and the response builder. Everything here is total: any
//! byte string either parses or yields a [`ParseError`]; nothing panics and
//! nothing allocates beyond the datagram's size.

use std::fmt::Write as _;

/// Largest message accepted (a UDP datagram's payload).
pub const MAX_MESSAGE: usize = 65_535;
/// Most header fields accepted in one message.
pub const MAX_HEADERS: usize = 100;
/// Longest body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// A parsed SIP request or response.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Request line or status line.
    pub start: StartLine,
    /// Headers in order, names in their long lower-case form.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes; any bytes).
    pub body: Vec<u8>,
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

/// Why bytes are not a usable SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed sip message: {reason}")]
pub struct ParseError {
    /// What is wrong.
    pub reason: &'static str,
}

fn fail(reason: &'static str) -> ParseError {
    ParseError { reason }
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
        "k" => "supported".into(),
        "r" => "refer-to".into(),
        _ => n,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where the head of `raw` ends and its body begins, if the blank line is
/// there (CRLF CRLF, or bare LF LF from lenient peers).
pub fn split_head(raw: &[u8]) -> Option<(usize, usize)> {
    match find(raw, b"\r\n\r\n") {
        Some(i) => Some((i, i + 4)),
        None => find(raw, b"\n\n").map(|i| (i, i + 2)),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

impl Message {
    /// Parses one message (a whole datagram, or one framed TCP message).
    pub fn parse(raw: &[u8]) -> Result<Self, ParseError> {
        if raw.len() > MAX_MESSAGE {
            return Err(fail("message too large"));
        }
        let (head_end, body_start) = split_head(raw).ok_or(fail("no end of headers"))?;
        // Headers should be UTF-8; carriers put Latin-1 display names in
        // them often enough that refusing would fail real calls. Anything
        // else is replaced, and control characters are refused below.
        let head = String::from_utf8_lossy(&raw[..head_end]);
        let body = &raw[body_start..];
        let mut lines = head.lines();
        let first = lines.next().ok_or(fail("empty message"))?.trim();
        let start = if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            let code: u16 = code
                .parse()
                .ok()
                .filter(|c| (100..700).contains(c))
                .ok_or(fail("bad status code"))?;
            StartLine::Response {
                code,
                reason: reason.to_owned(),
            }
        } else {
            let mut parts = first.split(' ');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(m), Some(uri), Some("SIP/2.0"), None)
                    if is_token(m)
                        && m.bytes().all(|b| b.is_ascii_uppercase())
                        && !uri.is_empty() =>
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
                let (_, v) = headers
                    .last_mut()
                    .ok_or(fail("continuation without header"))?;
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            if headers.len() >= MAX_HEADERS {
                return Err(fail("too many headers"));
            }
            let (name, value) = line.split_once(':').ok_or(fail("header without ':'"))?;
            if !is_token(name.trim()) {
                return Err(fail("bad header name"));
            }
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(fail("control character in header value"));
            }
            headers.push((long_name(name), value.trim().to_owned()));
        }
        let msg = Self {
            start,
            headers,
            body: Vec::new(),
        };
        for (required, why) in [
            ("call-id", "missing call-id"),
            ("cseq", "missing cseq"),
            ("from", "missing from"),
            ("to", "missing to"),
            ("via", "missing via"),
        ] {
            if msg.header(required).is_none_or(str::is_empty) {
                return Err(fail(why));
            }
        }
        let (_, method) = msg.cseq().ok_or(fail("bad cseq"))?;
        if let StartLine::Request { method: m, .. } = &msg.start {
            if *m != method {
                return Err(fail("cseq method differs from request method"));
            }
        }
        let len = match msg.header("content-length") {
            Some(l) => l.parse::<usize>().map_err(|_| fail("bad content-length"))?,
            None => body.len(),
        };
        if len > MAX_BODY {
            return Err(fail("body too large"));
        }
        if len > body.len() {
            return Err(fail("body shorter than content-length"));
        }
        Ok(Self {
            body: body[..len].to_vec(),
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

    /// All values of a header, comma-separated values split (for Via,
    /// Record-Route and the like, whose values hold no quoted commas we use).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(|(_, v)| split_commas(v))
    }

    /// All values of a header as they came (for headers whose values hold
    /// commas, such as `WWW-Authenticate`).
    pub fn header_values_raw<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
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
        let m = it.next()?;
        if it.next().is_some() || !is_token(m) {
            return None;
        }
        Some((n, m.to_owned()))
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

    /// The `branch` parameter of the top Via.
    pub fn top_branch(&self) -> Option<&str> {
        let top = self.header_values("via").next()?;
        param(top, "branch")
    }

    /// The `tag` parameter of the To header.
    pub fn to_tag(&self) -> Option<&str> {
        tag_of(self.header("to")?)
    }

    /// The `tag` parameter of the From header.
    pub fn from_tag(&self) -> Option<&str> {
        tag_of(self.header("from")?)
    }

    /// The URI inside the Contact header.
    pub fn contact_uri(&self) -> Option<String> {
        uri_of(self.header("contact")?)
    }

    /// The body as text, when it is UTF-8.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

/// Splits a header value at commas outside `<...>` and quotes.
pub fn split_commas(v: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    for (i, c) in v.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth <= 0 => {
                parts.push(v[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(v[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty())
}

/// A `;name=value` parameter of a header value (after the URI's `>` when
/// there is one).
pub fn param<'a>(v: &'a str, name: &str) -> Option<&'a str> {
    let after = match v.rfind('>') {
        Some(i) => &v[i + 1..],
        None => v,
    };
    after.split(';').skip(1).find_map(|p| {
        let (k, val) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| val.trim())
    })
}

/// The `tag=` parameter of a From/To value.
pub fn tag_of(v: &str) -> Option<&str> {
    let after = match v.rfind('>') {
        Some(i) => &v[i..],
        None => v,
    };
    after
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
        .filter(|t| !t.is_empty())
}

/// The URI of a name-addr or addr-spec.
pub fn uri_of(v: &str) -> Option<String> {
    if let (Some(a), Some(b)) = (v.find('<'), v.find('>')) {
        if a < b {
            return Some(v[a + 1..b].to_owned()).filter(|u| !u.is_empty());
        }
    }
    v.split(';')
        .next()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A response to an incoming request, copying its Via, From, To, Call-ID and
/// CSeq; adds our tag to To when it has none. `extra` holds whole header
/// lines (each ending in CRLF).
pub fn response_to(
    req: &Message,
    code: u16,
    reason: &str,
    local_tag: Option<&str>,
    extra: &str,
    body: &str,
) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for (n, v) in &req.headers {
        if n == "via" {
            let _ = write!(out, "Via: {v}\r\n");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx;rport=5060\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=abc\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:b@127.0.0.1:5070>\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\nRecord-Route: <sip:p3;lr>\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn parses_a_response() {
        let m = Message::parse(OK.as_bytes()).unwrap();
        assert_eq!(m.status(), Some(200));
        assert_eq!(m.call_id(), "c1");
        assert_eq!(m.cseq(), Some((1, "INVITE".into())));
        assert_eq!(m.to_tag(), Some("abc"));
        assert_eq!(m.from_tag(), Some("1"));
        assert_eq!(m.top_branch(), Some("z9hG4bKx"));
        assert_eq!(m.contact_uri().as_deref(), Some("sip:b@127.0.0.1:5070"));
        assert_eq!(m.body, b"v=0\n");
        let rr: Vec<_> = m.header_values("record-route").collect();
        assert_eq!(rr, ["<sip:p1;lr>", "<sip:p2;lr>", "<sip:p3;lr>"]);
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
    fn content_length_inside_a_multibyte_character_is_fine() {
        // The body is bytes: a length that ends inside "é" cuts the bytes,
        // not a string (the datagram that used to panic the receive task).
        let raw = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 2\r\n\r\naé";
        let m = Message::parse(raw.as_bytes()).unwrap();
        assert_eq!(m.body, b"a\xc3");
        assert_eq!(m.body_str(), None);
    }

    #[test]
    fn malformed_messages_are_refused() {
        let cases: &[&[u8]] = &[
            b"",
            b"garbage",
            b"SIP/2.0 abc OK\r\nCall-ID: c1\r\n\r\n",
            b"SIP/2.0 999 Weird\r\nCall-ID: c1\r\n\r\n",
            b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nCSeq: x INVITE\r\nFrom: a\r\nTo: b\r\nVia: v\r\n\r\n",
            b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nFrom: a\r\nTo: b\r\nVia: v\r\nContent-Length: 99\r\n\r\nshort",
            b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nFrom: a\r\nTo: b\r\nVia: v\r\nContent-Length: -1\r\n\r\n",
            b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nno colon here\r\n\r\n",
            b"SIP/2.0 200 OK\r\nCall-ID: \r\nCSeq: 1 INVITE\r\nFrom: a\r\nTo: b\r\nVia: v\r\n\r\n",
            b"SIP/2.0 200 OK\r\nCall-ID: c1\x01\r\nCSeq: 1 INVITE\r\nFrom: a\r\nTo: b\r\nVia: v\r\n\r\n",
            b"\xff\xfe\x00\r\n\r\n",
            b"invite sip:x SIP/2.0\r\nCall-ID: c1\r\n\r\n",
            b"BYE sip:x SIP/2.0\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nFrom: a\r\nTo: b\r\nVia: v\r\n\r\n",
            b"BYE  SIP/2.0\r\nCall-ID: c1\r\nCSeq: 1 BYE\r\nFrom: a\r\nTo: b\r\nVia: v\r\n\r\n",
            b" continuation\r\nSIP/2.0 200 OK\r\n\r\n",
        ];
        for raw in cases {
            assert!(
                Message::parse(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut many = b"SIP/2.0 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            Message::parse(&many).unwrap_err().reason,
            "too many headers"
        );
    }

    #[test]
    fn latin1_in_a_display_name_does_not_break_a_response() {
        let raw = b"SIP/2.0 183 Session Progress\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: \"Jos\xe9\" <sip:b@y>;tag=2\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = Message::parse(raw).unwrap();
        assert_eq!(m.status(), Some(183));
        assert_eq!(m.to_tag(), Some("2"));
    }

    #[test]
    fn params_and_uris() {
        assert_eq!(
            param("SIP/2.0/UDP h:5060;rport;branch=z9hG4bKa", "branch"),
            Some("z9hG4bKa")
        );
        assert_eq!(param("<sip:a;lr>;tag=x", "lr"), None);
        assert_eq!(tag_of("<sip:a;tag=no>"), None);
        assert_eq!(tag_of("<sip:a>;tag="), None);
        assert_eq!(uri_of("\"A, B\" <sip:a@b>").as_deref(), Some("sip:a@b"));
        assert_eq!(uri_of("<>"), None);
        let parts: Vec<_> = split_commas("\"x,y\" <sip:a>, <sip:b,c>").collect();
        assert_eq!(parts, ["\"x,y\" <sip:a>", "<sip:b,c>"]);
    }
}
