//! A minimal client of rtpengine's ng control protocol, for benchmarks that
//! relay RTP through Debian's `rtpengine` as a comparator.
//!
//! A request is a datagram `COOKIE SP BENCODED-DICT`; the reply repeats the
//! cookie. rtpengine caches replies by cookie, so a timed-out request is
//! retransmitted with the same cookie and is not applied twice.
//!
//! # Layout
//! - [`Bencode`]: the value type, with [`Bencode::encode`] and a
//!   [`Bencode::decode`] that rejects malformed input instead of panicking.
//! - [`NgClient`]: `ping`, `offer`, `answer`, `delete` over UDP.
//! - [`g711_sdp`] and [`sdp_audio_addr`]: the SDP a leg offers and where the
//!   peer's SDP says to send RTP.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

/// Nesting deeper than this is refused, so a hostile reply cannot overflow
/// the decoder's stack.
const MAX_DEPTH: usize = 64;

/// A bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bencode {
    /// `i42e`
    Int(i64),
    /// `4:spam`; rtpengine's strings are bytes, usually UTF-8.
    Bytes(Vec<u8>),
    /// `l...e`
    List(Vec<Bencode>),
    /// `d...e`; bencode requires keys sorted, which `BTreeMap` gives.
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

/// Why a bencoded text or an ng reply was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("unexpected end of input at byte {0}")]
    Eof(usize),
    /// A byte that cannot start or continue a value.
    #[error("unexpected byte {byte:#04x} at {at}")]
    Unexpected {
        /// The byte.
        byte: u8,
        /// Its offset.
        at: usize,
    },
    /// An integer or length that does not parse or does not fit.
    #[error("bad number at byte {0}")]
    BadNumber(usize),
    /// A dictionary key that is not a byte string.
    #[error("dictionary key at byte {0} is not a string")]
    BadKey(usize),
    /// More than [`MAX_DEPTH`] nested lists or dictionaries.
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// Bytes after the top-level value.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

impl Bencode {
    /// A byte string from text.
    pub fn str(s: &str) -> Self {
        Self::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from `(key, value)` pairs.
    pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Bencode)>) -> Self {
        Self::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// The bencoded form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Self::Bytes(b) => encode_bytes(b, out),
            Self::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode_into(out);
                }
                out.push(b'e');
            }
            Self::Dict(map) => {
                out.push(b'd');
                for (k, v) in map {
                    encode_bytes(k, out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes exactly one value filling `input`.
    pub fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder { input, pos: 0 };
        let v = d.value(0)?;
        match input.len() - d.pos {
            0 => Ok(v),
            n => Err(DecodeError::Trailing(n)),
        }
    }

    /// The value under `key` if this is a dictionary.
    pub fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Self::Dict(m) => m.get(key.as_bytes()),
            _ => None,
        }
    }

    /// The text of a byte string, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Eof(self.pos))
    }

    fn value(&mut self, depth: usize) -> Result<Bencode, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let n = self.number(b'e')?;
                Ok(Bencode::Int(n))
            }
            b'0'..=b'9' => self.bytes().map(Bencode::Bytes),
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Bencode::List(items))
            }
            b'd' => {
                self.pos += 1;
                let mut map = BTreeMap::new();
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return Err(DecodeError::BadKey(self.pos));
                    }
                    let k = self.bytes()?;
                    let v = self.value(depth + 1)?;
                    map.insert(k, v);
                }
                self.pos += 1;
                Ok(Bencode::Dict(map))
            }
            byte => Err(DecodeError::Unexpected { byte, at: self.pos }),
        }
    }

    /// Digits (with an optional leading minus) up to `end`, which is consumed.
    fn number(&mut self, end: u8) -> Result<i64, DecodeError> {
        let start = self.pos;
        let rest = &self.input[start..];
        let len = rest
            .iter()
            .position(|&b| b == end)
            .ok_or(DecodeError::Eof(self.input.len()))?;
        let text = std::str::from_utf8(&rest[..len]).map_err(|_| DecodeError::BadNumber(start))?;
        let valid = match text.strip_prefix('-') {
            Some(d) => !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()),
            None => !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
        };
        if !valid {
            return Err(DecodeError::BadNumber(start));
        }
        let n = text.parse().map_err(|_| DecodeError::BadNumber(start))?;
        self.pos = start + len + 1;
        Ok(n)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let at = self.pos;
        let len = self.number(b':')?;
        let len = usize::try_from(len).map_err(|_| DecodeError::BadNumber(at))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.input.len())
            .ok_or(DecodeError::Eof(self.input.len()))?;
        let b = self.input[self.pos..end].to_vec();
        self.pos = end;
        Ok(b)
    }
}

/// A request that failed.
#[derive(Debug, thiserror::Error)]
pub enum NgError {
    /// The socket failed.
    #[error("ng socket")]
    Io(#[source] std::io::Error),
    /// No reply with our cookie after every retransmission.
    #[error("no reply from rtpengine at {addr} after {tries} tries")]
    Timeout {
        /// Where the requests went.
        addr: SocketAddr,
        /// How many were sent.
        tries: u32,
    },
    /// A reply that is not `COOKIE SP DICT`.
    #[error("malformed ng reply")]
    Malformed(#[source] DecodeError),
    /// A reply without the field the command needs.
    #[error("ng reply lacks {0}")]
    Missing(&'static str),
    /// rtpengine answered `result: error` (or another non-ok result).
    #[error("rtpengine refused {command}: {reason}")]
    Refused {
        /// The command.
        command: String,
        /// `error-reason`, or the result itself.
        reason: String,
    },
}

/// Splits an ng reply into its cookie and dictionary.
pub fn parse_reply(datagram: &[u8]) -> Result<(&[u8], Bencode), DecodeError> {
    let space = datagram
        .iter()
        .position(|&b| b == b' ')
        .ok_or(DecodeError::Eof(datagram.len()))?;
    let body = Bencode::decode(&datagram[space + 1..])?;
    match body {
        Bencode::Dict(_) => Ok((&datagram[..space], body)),
        _ => Err(DecodeError::Unexpected {
            byte: datagram.get(space + 1).copied().unwrap_or(0),
            at: space + 1,
        }),
    }
}

/// A client of one rtpengine's ng port. Requests are sent one at a time.
pub struct NgClient {
    socket: UdpSocket,
    addr: SocketAddr,
    /// Prefix of every cookie, distinct per client.
    prefix: String,
    /// Number of the next request.
    next: u64,
    /// Wait for a reply before retransmitting.
    pub timeout: Duration,
    /// Transmissions per request.
    pub tries: u32,
}

impl NgClient {
    /// A client sending from an ephemeral loopback port to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self, NgError> {
        let bind: SocketAddr = match addr.ip() {
            IpAddr::V4(_) => "127.0.0.1:0",
            IpAddr::V6(_) => "[::1]:0",
        }
        .parse()
        .map_err(|_| NgError::Missing("bind address"))?;
        let socket = UdpSocket::bind(bind).await.map_err(NgError::Io)?;
        socket.connect(addr).await.map_err(NgError::Io)?;
        Ok(Self {
            socket,
            addr,
            prefix: format!("{:08x}", fastrand::u32(..)),
            next: 0,
            timeout: Duration::from_millis(500),
            tries: 3,
        })
    }

    /// Sends `dict` and returns the reply's dictionary when its `result` is
    /// `ok` or `pong`.
    pub async fn request(&mut self, dict: Bencode) -> Result<Bencode, NgError> {
        let command = dict
            .get("command")
            .and_then(Bencode::as_str)
            .unwrap_or("?")
            .to_owned();
        let cookie = format!("{}_{}", self.prefix, self.next);
        self.next += 1;
        let mut datagram = cookie.clone().into_bytes();
        datagram.push(b' ');
        datagram.extend_from_slice(&dict.encode());

        let mut buf = vec![0u8; 65536];
        for _ in 0..self.tries.max(1) {
            self.socket.send(&datagram).await.map_err(NgError::Io)?;
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                let n = match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                    Err(_) => break,
                    // An ICMP refusal from a port not yet listening: retry.
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                    Ok(Err(e)) => return Err(NgError::Io(e)),
                    Ok(Ok(n)) => n,
                };
                let (got, reply) = match parse_reply(&buf[..n]) {
                    Ok(r) => r,
                    // A stray datagram that is not ours is skipped, but a
                    // malformed one with our cookie is an error.
                    Err(e) if buf[..n].starts_with(cookie.as_bytes()) => {
                        return Err(NgError::Malformed(e))
                    }
                    Err(_) => continue,
                };
                if got != cookie.as_bytes() {
                    continue;
                }
                return check_result(&command, reply);
            }
        }
        Err(NgError::Timeout {
            addr: self.addr,
            tries: self.tries.max(1),
        })
    }

    /// `ping`; rtpengine answers `pong`.
    pub async fn ping(&mut self) -> Result<(), NgError> {
        self.request(Bencode::dict([("command", Bencode::str("ping"))]))
            .await
            .map(|_| ())
    }

    /// `offer` of `sdp` from `from_tag`; returns the SDP to hand to the callee.
    pub async fn offer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        sdp: &str,
    ) -> Result<String, NgError> {
        let reply = self
            .request(Bencode::dict([
                ("command", Bencode::str("offer")),
                ("call-id", Bencode::str(call_id)),
                ("from-tag", Bencode::str(from_tag)),
                ("sdp", Bencode::str(sdp)),
                ("ICE", Bencode::str("remove")),
            ]))
            .await?;
        sdp_of(&reply)
    }

    /// `answer` of `sdp` from `to_tag`; returns the SDP to hand to the caller.
    pub async fn answer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &str,
    ) -> Result<String, NgError> {
        let reply = self
            .request(Bencode::dict([
                ("command", Bencode::str("answer")),
                ("call-id", Bencode::str(call_id)),
                ("from-tag", Bencode::str(from_tag)),
                ("to-tag", Bencode::str(to_tag)),
                ("sdp", Bencode::str(sdp)),
                ("ICE", Bencode::str("remove")),
            ]))
            .await?;
        sdp_of(&reply)
    }

    /// `delete` of the whole call; returns the reply, which carries
    /// rtpengine's per-call statistics.
    pub async fn delete(&mut self, call_id: &str, from_tag: &str) -> Result<Bencode, NgError> {
        self.request(Bencode::dict([
            ("command", Bencode::str("delete")),
            ("call-id", Bencode::str(call_id)),
            ("from-tag", Bencode::str(from_tag)),
        ]))
        .await
    }
}

fn check_result(command: &str, reply: Bencode) -> Result<Bencode, NgError> {
    match reply.get("result").and_then(Bencode::as_str) {
        Some("ok" | "pong") => Ok(reply),
        Some(other) => Err(NgError::Refused {
            command: command.to_owned(),
            reason: reply
                .get("error-reason")
                .and_then(Bencode::as_str)
                .unwrap_or(other)
                .to_owned(),
        }),
        None => Err(NgError::Missing("result")),
    }
}

fn sdp_of(reply: &Bencode) -> Result<String, NgError> {
    reply
        .get("sdp")
        .and_then(Bencode::as_str)
        .map(str::to_owned)
        .ok_or(NgError::Missing("sdp"))
}

/// An SDP offering PCMU and PCMA at `addr`, 20 ms packets.
pub fn g711_sdp(addr: SocketAddr, session_id: u64) -> String {
    let (family, ip) = match addr.ip() {
        IpAddr::V4(ip) => ("IP4", ip.to_string()),
        IpAddr::V6(ip) => ("IP6", ip.to_string()),
    };
    format!(
        "v=0\r\n\
         o=- {session_id} 1 IN {family} {ip}\r\n\
         s=-\r\n\
         c=IN {family} {ip}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP 0 8\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=ptime:20\r\n\
         a=sendrecv\r\n",
        port = addr.port()
    )
}

/// Where `sdp` says to send the first audio stream: the `c=` line (media
/// level over session level) and the `m=audio` port.
pub fn sdp_audio_addr(sdp: &str) -> Option<SocketAddr> {
    let mut session_ip = None;
    let mut media_ip = None;
    let mut port = None;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            if port.is_some() {
                break;
            }
            if let Some(rest) = m.strip_prefix("audio ") {
                port = rest.split_whitespace().next()?.parse::<u16>().ok();
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let ip = c
                .split_whitespace()
                .nth(2)?
                .split('/')
                .next()?
                .parse::<IpAddr>()
                .ok();
            if port.is_some() {
                media_ip = ip;
            } else {
                session_ip = ip;
            }
        }
    }
    Some(SocketAddr::new(media_ip.or(session_ip)?, port?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_nested_values() {
        let v = Bencode::dict([
            ("command", Bencode::str("offer")),
            ("n", Bencode::Int(-42)),
            (
                "flags",
                Bencode::List(vec![
                    Bencode::str("a"),
                    Bencode::Int(0),
                    Bencode::List(vec![]),
                ]),
            ),
            ("empty", Bencode::Dict(BTreeMap::new())),
        ]);
        let text = v.encode();
        assert_eq!(Bencode::decode(&text), Ok(v));
    }

    #[test]
    fn encodes_keys_sorted() {
        let v = Bencode::dict([("b", Bencode::Int(1)), ("a", Bencode::str("x"))]);
        assert_eq!(v.encode(), b"d1:a1:x1:bi1ee");
    }

    #[test]
    fn decodes_an_rtpengine_reply() {
        let (cookie, d) = parse_reply(b"5323_1 d6:result4:ponge").expect("parses");
        assert_eq!(cookie, b"5323_1");
        assert_eq!(d.get("result").and_then(Bencode::as_str), Some("pong"));
        assert!(check_result("ping", d).is_ok());
    }

    #[test]
    fn refusal_carries_the_reason() {
        let (_, d) =
            parse_reply(b"c d6:result5:error12:error-reason12:Unknown calle").expect("parses");
        let e = check_result("answer", d).expect_err("refused");
        assert!(e.to_string().contains("Unknown call"), "{e}");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let bad: &[&[u8]] = &[
            b"",
            b"i",
            b"ie",
            b"i-e",
            b"i--1e",
            b"i12",
            b"i99999999999999999999999e",
            b"5:abc",
            b"-1:a",
            b"99999999999999999999999:a",
            b"18446744073709551615:a",
            b"l",
            b"d",
            b"d1:a",
            b"di1ei2ee",
            b"x",
            b"i1ei2e",
            b"d1:ai1e",
            b"l1:a",
            b"\xff",
            b"3:\xff\xfe",
        ];
        for input in bad {
            let r = Bencode::decode(input);
            assert!(
                r.is_err(),
                "{:?} decoded as {r:?}",
                String::from_utf8_lossy(input)
            );
        }
        let deep = vec![b'l'; 100_000];
        assert_eq!(Bencode::decode(&deep), Err(DecodeError::TooDeep));

        for reply in [&b"nocookie"[..], b"c i1e", b"c le", b"c d6:result", b" "] {
            assert!(parse_reply(reply).is_err());
        }
        let (_, no_result) = parse_reply(b"c de").expect("parses");
        assert!(matches!(
            check_result("x", no_result),
            Err(NgError::Missing("result"))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"ild0123456789e:-x ";
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            if let Ok(v) = Bencode::decode(&input) {
                // What decodes re-encodes to a value that decodes the same.
                assert_eq!(Bencode::decode(&v.encode()), Ok(v));
            }
            let _ = parse_reply(&input);
        }
    }

    #[test]
    fn reads_the_audio_address_of_an_sdp() {
        let addr: SocketAddr = "127.0.0.1:30012".parse().expect("addr");
        assert_eq!(sdp_audio_addr(&g711_sdp(addr, 1)), Some(addr));

        let media_level =
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 127.0.0.2\r\n";
        assert_eq!(
            sdp_audio_addr(media_level),
            Some("127.0.0.2:4000".parse().expect("addr"))
        );
        assert_eq!(sdp_audio_addr("v=0\r\nm=audio 4000 RTP/AVP 0\r\n"), None);
        assert_eq!(
            sdp_audio_addr("c=IN IP4 127.0.0.1\r\nm=audio x RTP/AVP 0\r\n"),
            None
        );
        assert_eq!(sdp_audio_addr(""), None);
    }

    #[tokio::test]
    async fn times_out_when_nobody_answers() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut c = NgClient::connect(silent.local_addr().expect("addr"))
            .await
            .expect("client");
        c.timeout = Duration::from_millis(50);
        c.tries = 2;
        assert!(matches!(
            c.ping().await,
            Err(NgError::Timeout { tries: 2, .. })
        ));
    }

    #[tokio::test]
    async fn skips_stray_datagrams_and_matches_the_cookie() {
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = server.recv_from(&mut buf).await {
                let Some(sp) = buf[..n].iter().position(|&b| b == b' ') else {
                    continue;
                };
                let cookie = buf[..sp].to_vec();
                let _ = server.send_to(b"garbage", peer).await;
                let _ = server.send_to(b"other d6:result4:ponge", peer).await;
                let mut reply = cookie;
                reply.extend_from_slice(b" d6:result4:ponge");
                let _ = server.send_to(&reply, peer).await;
            }
        });
        let mut c = NgClient::connect(addr).await.expect("client");
        c.ping().await.expect("pong");
        c.ping().await.expect("second pong");
    }
}
