//! An SMTP sink: a TCP server on loopback that speaks enough SMTP (RFC 5321:
//! EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) to receive mail from a
//! real client, keeps every message, and can refuse the next few with a
//! temporary error to exercise retries. Plain text only (no STARTTLS).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One received message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `MAIL FROM` address.
    pub from: String,
    /// `RCPT TO` addresses.
    pub to: Vec<String>,
    /// The message as sent after `DATA` (dot-unstuffed).
    pub data: String,
}

impl Mail {
    /// The first header `name` (unfolded), case-insensitive.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut out: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = out.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if out.is_some() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case(name) {
                    out = Some(v.trim().to_owned());
                }
            }
        }
        out
    }

    /// The message with quoted-printable soft breaks and `=XX` escapes
    /// undone (harmless on 7bit parts).
    pub fn decoded(&self) -> String {
        let b = self.data.replace("=\r\n", "").into_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' && i + 2 < b.len() {
                if let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(&b[i + 1..i + 3]), 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[derive(Default)]
struct State {
    mails: Vec<Mail>,
    refuse_next: usize,
    refused: usize,
}

/// The sink; stops when dropped.
pub struct SmtpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Longest command line or message the sink accepts.
const MAX_LINE: usize = 4096;
const MAX_DATA: usize = 1 << 20;

impl SmtpSink {
    /// Starts a sink on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("smtp sink binds");
        let addr = listener.local_addr().expect("smtp sink address");
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
                    tokio::spawn(session(sock, st.clone()));
                }
            }
        });
        Self { addr, state, stop }
    }

    /// Messages received so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.state.lock().unwrap().mails.clone()
    }

    /// Answers the next `n` messages' DATA with `451` (try again later).
    pub fn refuse_next(&self, n: usize) {
        self.state.lock().unwrap().refuse_next = n;
    }

    /// Messages refused so far.
    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }
}

fn address(arg: &str) -> String {
    let a = arg.split_once(':').map_or(arg, |(_, v)| v).trim();
    a.trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default()
        .to_owned()
}

async fn session(sock: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    if w.write_all(b"220 dialstack-test-sink ESMTP\r\n")
        .await
        .is_err()
    {
        return;
    }
    let (mut from, mut to) = (String::new(), Vec::new());
    loop {
        let mut line = String::new();
        match (&mut r).take(MAX_LINE as u64).read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = line.trim_end().to_owned();
        let verb = cmd
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-dialstack-test-sink\r\n250-8BITMIME\r\n250 SIZE 1048576\r\n",
            "HELO" => b"250 dialstack-test-sink\r\n",
            "MAIL" => {
                from = address(&cmd[4..]);
                to.clear();
                b"250 ok\r\n"
            }
            "RCPT" => {
                to.push(address(&cmd[4..]));
                b"250 ok\r\n"
            }
            "DATA" => {
                if w.write_all(b"354 end with <CRLF>.<CRLF>\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    match (&mut r).take(MAX_LINE as u64).read_line(&mut l).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                    if data.len() < MAX_DATA {
                        data.push_str(l.strip_prefix('.').unwrap_or(&l));
                    }
                }
                let mut s = state.lock().unwrap();
                if s.refuse_next > 0 {
                    s.refuse_next -= 1;
                    s.refused += 1;
                    drop(s);
                    b"451 4.3.0 try again later\r\n"
                } else {
                    s.mails.push(Mail {
                        from: from.clone(),
                        to: to.clone(),
                        data,
                    });
                    drop(s);
                    b"250 2.0.0 queued\r\n"
                }
            }
            "RSET" | "NOOP" => b"250 ok\r\n",
            "QUIT" => {
                let _ = w.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"502 5.5.2 not implemented\r\n",
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}
