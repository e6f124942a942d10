//! SIP over TCP towards the trunk (RFC 3261 §18): one connection per peer,
//! opened on first use and again after it drops, messages framed by
//! `Content-Length` (mandatory on a stream). Used when the trunk URI says
//! `;transport=tcp`, and for requests too large for UDP (§18.1.1: over 1300
//! bytes) when the trunk accepts TCP.
//!
//! The framing is total and bounded like the datagram parser: a head longer
//! than 64 KiB, a missing or bad `Content-Length`, or a body over the limit
//! closes the connection (counted as `malformed`); nothing a peer sends can
//! grow the buffer past one message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::message::{split_head, MAX_BODY, MAX_MESSAGE};
use super::transport::{DropReason, SipTransport};

/// Messages queued for a connection that is (re)connecting.
const QUEUE: usize = 1_024;
/// How long one write may wait for a peer that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes one whole message off the front of `buf`: `Ok(None)` when more
/// bytes are needed, an error when the stream cannot be a SIP stream.
pub fn next_frame(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, &'static str> {
    // Keep-alive CRLFs between messages (RFC 5626).
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    buf.drain(..skip);
    let Some((head_end, body_start)) = split_head(buf) else {
        return if buf.len() > MAX_MESSAGE {
            Err("head too long")
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head not UTF-8")?;
    let len = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l"))
                .then(|| value.trim())
        })
        .ok_or("no content-length on a stream")?
        .parse::<usize>()
        .map_err(|_| "bad content-length")?;
    if len > MAX_BODY {
        return Err("body too large");
    }
    let total = body_start + len;
    if buf.len() < total {
        return Ok(None);
    }
    let frame: Vec<u8> = buf.drain(..total).collect();
    Ok(Some(frame))
}

/// One connection's sending side.
#[derive(Clone)]
pub struct Link {
    out: mpsc::Sender<Vec<u8>>,
    /// The last connection attempt failed (for the size rule's fallback).
    failed: Arc<AtomicBool>,
}

impl Link {
    /// Queues a message; `false` when the queue is full.
    pub fn send(&self, msg: &[u8]) -> bool {
        self.out.try_send(msg.to_vec()).is_ok()
    }

    /// Whether the last connection attempt failed.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Starts the connection manager for `peer`: each whole message received
/// goes through `transport` as if it were a datagram from `peer`, in order.
pub fn open(peer: SocketAddr, transport: Weak<SipTransport>, stop: CancellationToken) -> Link {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let failed = Arc::new(AtomicBool::new(false));
    let link = Link {
        out: tx,
        failed: failed.clone(),
    };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let connect = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(peer));
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                r = connect => r,
            };
            let stream = match stream {
                Ok(Ok(s)) => {
                    failed.store(false, Ordering::Relaxed);
                    s
                }
                _ => {
                    failed.store(true, Ordering::Relaxed);
                    tracing::warn!(%peer, "sip tcp connection failed");
                    // Whatever waited for this connection is given up: the
                    // transactions retransmit or time out on their own.
                    while rx.try_recv().is_ok() {}
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tracing::info!(%peer, "sip tcp connected");
            let (mut read, mut write) = stream.into_split();
            let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
            let mut chunk = vec![0u8; 16 * 1024];
            let ended = loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    out = rx.recv() => match out {
                        Some(m) => {
                            // A peer that stops reading must not hold this
                            // task (nor, through its queue, every call).
                            match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&m)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => break format!("write: {e}"),
                                Err(_) => break "write timed out".to_owned(),
                            }
                        }
                        None => return,
                    },
                    n = read.read(&mut chunk) => match n {
                        Ok(0) => break "closed by peer".to_owned(),
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            let Some(transport) = transport.upgrade() else { return };
                            let mut broken = None;
                            loop {
                                match next_frame(&mut buf) {
                                    Ok(Some(frame)) => transport.handle_datagram(&frame, peer).await,
                                    Ok(None) => break,
                                    Err(why) => {
                                        broken = Some(why);
                                        break;
                                    }
                                }
                            }
                            if let Some(why) = broken {
                                transport.metrics().drop(DropReason::Malformed);
                                break format!("framing: {why}");
                            }
                        }
                        Err(e) => break format!("read: {e}"),
                    },
                }
            };
            tracing::warn!(%peer, reason = %ended, "sip tcp connection ended, reconnecting");
            // Never a busy loop against a peer that accepts and closes.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
    link
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nCall-ID: c\r\nContent-Length: 3\r\n\r\nabc";

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(MSG);
        stream.extend_from_slice(MSG);
        for cut in 0..stream.len() {
            let mut buf = stream[..cut].to_vec();
            let mut got = Vec::new();
            while let Some(f) = next_frame(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&stream[cut..]);
            while let Some(f) = next_frame(&mut buf).unwrap() {
                got.push(f);
            }
            assert_eq!(got, vec![MSG.to_vec(), MSG.to_vec()], "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn broken_streams_are_refused() {
        let mut no_len = b"SIP/2.0 200 OK\r\nCall-ID: c\r\n\r\n".to_vec();
        assert_eq!(
            next_frame(&mut no_len),
            Err("no content-length on a stream")
        );
        let mut bad = b"SIP/2.0 200 OK\r\nl: -4\r\n\r\n".to_vec();
        assert_eq!(next_frame(&mut bad), Err("bad content-length"));
        let mut huge = b"SIP/2.0 200 OK\r\nContent-Length: 99999999\r\n\r\n".to_vec();
        assert_eq!(next_frame(&mut huge), Err("body too large"));
        let mut endless = vec![b'a'; MAX_MESSAGE + 1];
        assert_eq!(next_frame(&mut endless), Err("head too long"));
        let mut partial = vec![b'a'; 100];
        assert_eq!(next_frame(&mut partial), Ok(None));
    }
}
