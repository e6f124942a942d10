//! Notification channels as data: a WeCom group robot or an SMTP mailbox.
//! Secrets (the robot's webhook URL, which carries its key, and SMTP
//! passwords) never live in the database: a channel names the environment
//! variable that holds them, and that name must start with
//! [`SECRET_PREFIX`], so a channel cannot be pointed at other settings.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rules::RuleError;

/// Environment variables a channel may read its secrets from.
pub const SECRET_PREFIX: &str = "DIALSTACK_ALERT_";

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain SMTP (a relay on the same host or network only).
    None,
    /// Plain, upgraded with STARTTLS (port 587), required.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// What a channel delivers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChannelSpec {
    /// A WeCom (企业微信) group robot.
    Wecom {
        /// The variable holding the robot's webhook URL.
        url_env: String,
    },
    /// E-mail over SMTP.
    Email {
        /// Server host.
        smtp_host: String,
        /// Server port.
        smtp_port: u16,
        /// Transport security.
        tls: SmtpTls,
        /// Login user, when the server wants one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// The variable holding the password (with `username`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_env: Option<String>,
        /// Sender address.
        from: String,
        /// Recipients.
        to: Vec<String>,
    },
}

fn bad(field: &'static str, reason: impl Into<String>) -> RuleError {
    RuleError {
        field,
        reason: reason.into(),
    }
}

fn env_name(field: &'static str, v: Option<&Value>) -> Result<String, RuleError> {
    let s = v
        .and_then(Value::as_str)
        .ok_or_else(|| bad(field, "is required: the name of an environment variable"))?;
    if !s.starts_with(SECRET_PREFIX)
        || s.len() > 128
        || !s
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(bad(
            field,
            format!("must be an environment variable name starting with {SECRET_PREFIX}"),
        ));
    }
    Ok(s.to_owned())
}

/// A plausible mailbox: `local@domain`, no spaces, brackets or line breaks.
fn address(field: &'static str, v: &Value) -> Result<String, RuleError> {
    let s = v
        .as_str()
        .ok_or_else(|| bad(field, "must be an e-mail address"))?;
    let ok = s.len() <= 254
        && s.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
        })
        && s.matches('@').count() == 1
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>(),;:\"[]\\".contains(c));
    if !ok {
        return Err(bad(field, format!("{s:?} is not an e-mail address")));
    }
    Ok(s.to_owned())
}

/// Most recipients of one channel.
pub const MAX_RECIPIENTS: usize = 50;

impl ChannelSpec {
    /// Reads a channel (without its `name`) from a JSON object, naming the
    /// field at fault.
    pub fn from_json(v: &Value) -> Result<Self, RuleError> {
        let o = v
            .as_object()
            .ok_or_else(|| bad("body", "must be a JSON object"))?;
        let known: &[&str] = match o.get("kind").and_then(Value::as_str) {
            Some("wecom") => &["kind", "name", "url_env"],
            Some("email") => &[
                "kind",
                "name",
                "smtp_host",
                "smtp_port",
                "tls",
                "username",
                "password_env",
                "from",
                "to",
            ],
            _ => return Err(bad("kind", "must be \"wecom\" or \"email\"")),
        };
        if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(bad("body", format!("unknown field {k:?}")));
        }
        if o.get("kind").and_then(Value::as_str) == Some("wecom") {
            return Ok(Self::Wecom {
                url_env: env_name("url_env", o.get("url_env"))?,
            });
        }
        let host = o
            .get("smtp_host")
            .and_then(Value::as_str)
            .filter(|h| {
                !h.is_empty()
                    && h.len() <= 253
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .ok_or_else(|| bad("smtp_host", "must be a host name or address"))?;
        let tls = match o.get("tls").map(|v| v.as_str()) {
            None | Some(Some("starttls")) => SmtpTls::Starttls,
            Some(Some("tls")) => SmtpTls::Tls,
            Some(Some("none")) => SmtpTls::None,
            _ => return Err(bad("tls", "must be starttls, tls or none")),
        };
        let port = match o.get("smtp_port") {
            None => match tls {
                SmtpTls::Tls => 465,
                SmtpTls::Starttls => 587,
                SmtpTls::None => 25,
            },
            Some(p) => p
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("smtp_port", "must be 1-65535"))?,
        };
        let username = match o.get("username") {
            None | Some(Value::Null) => None,
            Some(u) => Some(
                u.as_str()
                    .filter(|u| !u.is_empty() && u.len() <= 254 && !u.chars().any(char::is_control))
                    .ok_or_else(|| bad("username", "must be 1-254 characters"))?
                    .to_owned(),
            ),
        };
        let password_env = match o.get("password_env") {
            None | Some(Value::Null) => None,
            v => Some(env_name("password_env", v)?),
        };
        if username.is_some() != password_env.is_some() {
            return Err(bad("password_env", "username and password_env go together"));
        }
        let from = address("from", o.get("from").unwrap_or(&Value::Null))?;
        let to = o
            .get("to")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty() && a.len() <= MAX_RECIPIENTS)
            .ok_or_else(|| bad("to", format!("must list 1-{MAX_RECIPIENTS} addresses")))?
            .iter()
            .map(|a| address("to", a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Email {
            smtp_host: host.to_owned(),
            smtp_port: port,
            tls,
            username,
            password_env,
            from,
            to,
        })
    }

    /// `wecom` or `email`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Wecom { .. } => "wecom",
            Self::Email { .. } => "email",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn channels_are_read_field_by_field() {
        let w = ChannelSpec::from_json(
            &json!({"kind": "wecom", "name": "ops", "url_env": "DIALSTACK_ALERT_WECOM_OPS"}),
        )
        .unwrap();
        assert_eq!(w.kind(), "wecom");
        let e = ChannelSpec::from_json(&json!({"kind": "email", "smtp_host": "mail.example.net",
            "from": "dialstack@example.net", "to": ["ops@example.net"]}))
        .unwrap();
        assert!(matches!(
            e,
            ChannelSpec::Email {
                smtp_port: 587,
                tls: SmtpTls::Starttls,
                ..
            }
        ));
        let cases: &[(&str, Value)] = &[
            ("kind", json!({"kind": "pager"})),
            ("kind", json!({})),
            ("url_env", json!({"kind": "wecom"})),
            (
                "url_env",
                json!({"kind": "wecom", "url_env": "DIALSTACK_DATABASE_URL"}),
            ),
            (
                "url_env",
                json!({"kind": "wecom", "url_env": "DIALSTACK_ALERT_x y"}),
            ),
            (
                "body",
                json!({"kind": "wecom", "url_env": "DIALSTACK_ALERT_A", "url": "http://x"}),
            ),
            (
                "smtp_host",
                json!({"kind": "email", "from": "a@b.c", "to": ["a@b.c"]}),
            ),
            (
                "smtp_host",
                json!({"kind": "email", "smtp_host": "a b", "from": "a@b.c", "to": ["a@b.c"]}),
            ),
            (
                "smtp_port",
                json!({"kind": "email", "smtp_host": "h", "smtp_port": 70000, "from": "a@b.c", "to": ["a@b.c"]}),
            ),
            (
                "tls",
                json!({"kind": "email", "smtp_host": "h", "tls": "ssl3", "from": "a@b.c", "to": ["a@b.c"]}),
            ),
            (
                "from",
                json!({"kind": "email", "smtp_host": "h", "from": "nobody", "to": ["a@b.c"]}),
            ),
            (
                "to",
                json!({"kind": "email", "smtp_host": "h", "from": "a@b.c", "to": []}),
            ),
            (
                "to",
                json!({"kind": "email", "smtp_host": "h", "from": "a@b.c", "to": ["x@y.z\r\nBcc: evil@x.y"]}),
            ),
            (
                "password_env",
                json!({"kind": "email", "smtp_host": "h", "username": "u", "from": "a@b.c", "to": ["a@b.c"]}),
            ),
        ];
        for (field, v) in cases {
            assert_eq!(ChannelSpec::from_json(v).unwrap_err().field, *field, "{v}");
        }
    }
}
