//! A WeCom (企业微信) group robot on loopback: it answers
//! `POST /cgi-bin/webhook/send?key=...` as the real robot does, with
//! `{"errcode": 0, "errmsg": "ok"}`, or with scripted failures (its
//! rate-limit error 45009, other error codes, HTTP errors), and keeps every
//! request it received.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How the robot answers one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reply {
    /// HTTP 200 `{"errcode": 0}`.
    Ok,
    /// HTTP 200 with this error code.
    Errcode(i64),
    /// This HTTP status, empty body.
    Status(u16),
}

/// One request the robot received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `key` query parameter.
    pub key: String,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
    /// How the robot answered.
    pub reply: Reply,
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    received: Vec<Received>,
}

/// The robot; stops when dropped.
pub struct WecomRobot {
    /// The webhook URL (with key `test-key`).
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Drop for WecomRobot {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl WecomRobot {
    /// Starts a robot on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("robot binds");
        let addr = listener.local_addr().expect("robot address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = CancellationToken::new();
        let (st, token) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = token.cancelled() => return,
                    c = listener.accept() => c,
                };
                if let Ok((sock, _)) = conn {
                    tokio::spawn(serve(sock, st.clone()));
                }
            }
        });
        Self {
            url: format!("http://{addr}/cgi-bin/webhook/send?key=test-key"),
            state,
            stop,
        }
    }

    /// Answers the next requests with `replies`, in order, then `Ok` again.
    pub fn script(&self, replies: &[Reply]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(replies.iter().copied());
    }

    /// Every request received.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The markdown contents of the messages the robot accepted.
    pub fn accepted(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| r.reply == Reply::Ok)
            .map(|r| {
                r.body["markdown"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

const MAX_REQUEST: usize = 1 << 20;

async fn serve(mut sock: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, content_length) = loop {
        let n = match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return;
        }
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (pos + 4, len.min(MAX_REQUEST));
        }
    };
    while buf.len() < head_end + content_length {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
    let key = target
        .split_once("key=")
        .map(|(_, k)| k.split('&').next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body: Value =
        serde_json::from_slice(&buf[head_end..head_end + content_length]).unwrap_or(Value::Null);
    let (status, payload) = {
        let mut s = state.lock().unwrap();
        let reply = if !target.starts_with("/cgi-bin/webhook/send") || key.is_empty() {
            Reply::Errcode(93000)
        } else if body["msgtype"] != "markdown" && body["msgtype"] != "text" {
            Reply::Errcode(40008)
        } else {
            s.script.pop_front().unwrap_or(Reply::Ok)
        };
        s.received.push(Received { key, body, reply });
        match reply {
            Reply::Ok => (200, json!({"errcode": 0, "errmsg": "ok"}).to_string()),
            Reply::Errcode(45009) => (
                200,
                json!({"errcode": 45009, "errmsg": "api freq out of limit"}).to_string(),
            ),
            Reply::Errcode(c) => (200, json!({"errcode": c, "errmsg": "error"}).to_string()),
            Reply::Status(s) => (s, String::new()),
        }
    };
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}
