//! HTTP Digest authentication as SIP uses it (RFC 3261 §22, RFC 2617,
//! RFC 7616, RFC 8760): reading a `401`'s `WWW-Authenticate` or a `407`'s
//! `Proxy-Authenticate` and computing the `Authorization` /
//! `Proxy-Authorization` value for MD5 or SHA-256, with `qop=auth` and a
//! nonce count. The password never leaves this module except hashed.

use md5::Digest as _;

/// Trunk credentials (`DIALSTACK_SIP_USERNAME` / `DIALSTACK_SIP_PASSWORD`).
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password, even in a debug dump.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The hash of a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (RFC 2617).
    Md5,
    /// SHA-256 (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    fn hash(self, s: &str) -> String {
        fn hex(bytes: &[u8]) -> String {
            use std::fmt::Write as _;
            let mut out = String::with_capacity(bytes.len() * 2);
            for b in bytes {
                let _ = write!(out, "{b:02x}");
            }
            out
        }
        match self {
            Self::Md5 => hex(&md5::Md5::digest(s.as_bytes())),
            Self::Sha256 => hex(&sha2::Sha256::digest(s.as_bytes())),
        }
    }
}

/// One digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Realm.
    pub realm: String,
    /// Server nonce.
    pub nonce: String,
    /// Opaque value to echo.
    pub opaque: Option<String>,
    /// Hash.
    pub algorithm: Algorithm,
    /// Whether `qop=auth` is offered (else the RFC 2069 form is used).
    pub qop_auth: bool,
}

/// Why a challenge cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// Not a Digest challenge or a required parameter is missing.
    #[error("malformed challenge: {0}")]
    Malformed(&'static str),
    /// An algorithm or qop we do not speak (e.g. `auth-int` only, `-sess`).
    #[error("unsupported challenge: {0}")]
    Unsupported(String),
}

/// Splits `k=v, k="v, with comma"` into pairs.
fn auth_params(s: &str) -> Result<Vec<(String, String)>, ChallengeError> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or(ChallengeError::Malformed("parameter without ="))?;
        let key = rest[..eq].trim().to_ascii_lowercase();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ChallengeError::Malformed("bad parameter name"));
        }
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => v.push(c),
                }
            }
            let end = end.ok_or(ChallengeError::Malformed("unterminated quote"))?;
            value = v;
            rest = q[end + 1..].trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        out.push((key, value));
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(ChallengeError::Malformed("parameters not separated by ,"));
        }
        if out.len() > 32 {
            return Err(ChallengeError::Malformed("too many parameters"));
        }
    }
    Ok(out)
}

impl Challenge {
    /// Parses one `Digest ...` header value.
    pub fn parse(value: &str) -> Result<Self, ChallengeError> {
        let v = value.trim();
        let scheme_end = v.find(char::is_whitespace).unwrap_or(v.len());
        if !v[..scheme_end].eq_ignore_ascii_case("digest") {
            return Err(ChallengeError::Malformed("not a Digest challenge"));
        }
        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut algorithm = Algorithm::Md5;
        let mut qop: Option<String> = None;
        for (k, val) in auth_params(&v[scheme_end..])? {
            match k.as_str() {
                "realm" => realm = Some(val),
                "nonce" => nonce = Some(val),
                "opaque" => opaque = Some(val),
                "qop" => qop = Some(val),
                "algorithm" => {
                    algorithm = match val.to_ascii_uppercase().as_str() {
                        "MD5" => Algorithm::Md5,
                        "SHA-256" => Algorithm::Sha256,
                        other => {
                            return Err(ChallengeError::Unsupported(format!("algorithm {other}")))
                        }
                    }
                }
                _ => {}
            }
        }
        let qop_auth = match qop {
            None => false,
            Some(q) => {
                if q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")) {
                    true
                } else {
                    return Err(ChallengeError::Unsupported(format!("qop {q}")));
                }
            }
        };
        Ok(Self {
            realm: realm.ok_or(ChallengeError::Malformed("no realm"))?,
            nonce: nonce
                .filter(|n| !n.is_empty())
                .ok_or(ChallengeError::Malformed("no nonce"))?,
            opaque,
            algorithm,
            qop_auth,
        })
    }

    /// The best of several challenges (SHA-256 over MD5), or the first
    /// error when none can be answered.
    pub fn pick<'a>(values: impl Iterator<Item = &'a str>) -> Result<Self, ChallengeError> {
        let mut best: Option<Self> = None;
        let mut first_err = None;
        for v in values.take(8) {
            match Self::parse(v) {
                Ok(c) => {
                    if best.as_ref().is_none_or(|b| b.algorithm == Algorithm::Md5) {
                        best = Some(c);
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        best.ok_or_else(|| first_err.unwrap_or(ChallengeError::Malformed("no challenge")))
    }

    /// The credentials header value for `method` on `uri`, nonce count `nc`
    /// and client nonce `cnonce`.
    pub fn authorize(
        &self,
        creds: &Credentials,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) -> String {
        let h = |s: &str| self.algorithm.hash(s);
        let ha1 = h(&format!(
            "{}:{}:{}",
            creds.username, self.realm, creds.password
        ));
        let ha2 = h(&format!("{method}:{uri}"));
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", algorithm={}",
            q(&creds.username),
            q(&self.realm),
            q(&self.nonce),
            q(uri),
            self.algorithm.name()
        );
        let response = if self.qop_auth {
            let nc = format!("{nc:08x}");
            let r = h(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce));
            out.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{}\"", q(cnonce)));
            r
        } else {
            h(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        out.push_str(&format!(", response=\"{response}\""));
        if let Some(o) = &self.opaque {
            out.push_str(&format!(", opaque=\"{}\"", q(o)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    fn field<'a>(h: &'a str, k: &str) -> &'a str {
        let start = h.find(&format!("{k}=")).unwrap() + k.len() + 1;
        let rest = &h[start..];
        let rest = rest.strip_prefix('"').unwrap_or(rest);
        let end = rest.find(['"', ',']).unwrap_or(rest.len());
        &rest[..end]
    }

    #[test]
    fn rfc2617_example() {
        // RFC 2617 §3.5: Mufasa / Circle Of Life, qop=auth.
        let c = Challenge::parse(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert!(c.qop_auth);
        assert_eq!(c.algorithm, Algorithm::Md5);
        let h = c.authorize(
            &creds("Mufasa", "Circle Of Life"),
            "GET",
            "/dir/index.html",
            1,
            "0a4f113b",
        );
        assert_eq!(field(&h, "response"), "6629fae49393a05397450978507c4ef1");
        assert_eq!(field(&h, "nc"), "00000001");
        assert_eq!(field(&h, "opaque"), "5ccc069c403ebaf9f0171e9517f40e41");
    }

    #[test]
    fn rfc7616_sha256_example() {
        // RFC 7616 §3.9.1: Mufasa / Circle of Life, SHA-256.
        let c = Challenge::parse(
            r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        )
        .unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        let h = c.authorize(
            &creds("Mufasa", "Circle of Life"),
            "GET",
            "/dir/index.html",
            1,
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        );
        assert_eq!(
            field(&h, "response"),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn without_qop_and_choosing_the_strongest() {
        let c = Challenge::parse(r#"Digest realm="r", nonce="n""#).unwrap();
        assert!(!c.qop_auth);
        let h = c.authorize(&creds("u", "p"), "INVITE", "sip:x@y", 1, "c");
        assert!(!h.contains("qop="));
        let ha1 = Algorithm::Md5.hash("u:r:p");
        let ha2 = Algorithm::Md5.hash("INVITE:sip:x@y");
        assert_eq!(
            field(&h, "response"),
            Algorithm::Md5.hash(&format!("{ha1}:n:{ha2}"))
        );
        let best = Challenge::pick(
            [
                r#"Digest realm="r", nonce="n", algorithm=MD5"#,
                r#"Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth""#,
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(
            (best.algorithm, best.nonce.as_str()),
            (Algorithm::Sha256, "n2")
        );
    }

    #[test]
    fn bad_challenges_are_errors() {
        for bad in [
            "",
            "Basic realm=\"r\"",
            "Digest",
            "Digest realm=\"r\"",
            "Digest nonce=\"n\"",
            "Digest realm=\"r, nonce=\"n\"",
            "Digest realm=\"r\" nonce=\"n\"",
            "Digest =x",
            "Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess",
            "Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"",
        ] {
            assert!(Challenge::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Challenge::pick(std::iter::empty()).is_err());
        let dbg = format!("{:?}", creds("u", "hunter2"));
        assert!(!dbg.contains("hunter2"));
    }
}
