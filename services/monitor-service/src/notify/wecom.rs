//! WeCom (企业微信) group robot: `POST` of a markdown message to the
//! robot's webhook URL. The robot answers HTTP 200 with
//! `{"errcode": 0, "errmsg": "ok"}`; a non-zero `errcode` is a failure,
//! and [`RATE_LIMITED`] means more than 20 messages in a minute.

use serde::Deserialize;
use serde_json::json;

use super::SendError;

/// The robot's "API freq out of limit" error code.
pub const RATE_LIMITED: i64 = 45009;
/// Error codes retrying cannot fix: invalid webhook key, robot removed.
const PERMANENT: &[i64] = &[93000, 93004, 93008, 40058];
/// The robot refuses markdown content longer than this (bytes).
pub const MAX_CONTENT: usize = 4096;

#[derive(Deserialize)]
struct Reply {
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Sends `markdown` to the robot at `url`.
pub async fn send(http: &reqwest::Client, url: &str, markdown: &str) -> Result<(), SendError> {
    let body =
        json!({"msgtype": "markdown", "markdown": {"content": truncate(markdown, MAX_CONTENT)}});
    let resp = http
        .post(url)
        .json(&body)
        .send()
        .await
        // The URL carries the robot's key: errors are logged without it.
        .map_err(|e| SendError::Transient(format!("robot unreachable: {}", e.without_url())))?;
    let status = resp.status();
    if status.as_u16() == 429 {
        return Err(SendError::RateLimited("robot answered 429".into()));
    }
    if !status.is_success() {
        return Err(SendError::Transient(format!(
            "robot answered HTTP {status}"
        )));
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| SendError::Transient(format!("robot reply lost: {}", e.without_url())))?;
    let reply: Reply = serde_json::from_slice(&bytes[..bytes.len().min(64 * 1024)])
        .map_err(|e| SendError::Transient(format!("robot reply is not its JSON: {e}")))?;
    match reply.errcode {
        0 => Ok(()),
        RATE_LIMITED => Err(SendError::RateLimited(format!(
            "robot rate limit ({}): {}",
            reply.errcode, reply.errmsg
        ))),
        c if PERMANENT.contains(&c) => Err(SendError::Permanent(format!(
            "robot refused ({c}): {}",
            reply.errmsg
        ))),
        c => Err(SendError::Transient(format!(
            "robot error {c}: {}",
            reply.errmsg
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("告警告警", 7), "告警");
        assert_eq!(truncate("", 0), "");
    }
}
