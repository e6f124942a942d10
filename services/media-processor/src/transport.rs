//! The SIP socket: one UDP socket for every call, a receive loop that hands
//! each message to its call by Call-ID, and answers for requests that belong
//! to no call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sip::{response_to, Message};

/// What a call receives.
#[derive(Debug)]
pub enum Inbound {
    /// A message for this call.
    Msg(Message, SocketAddr),
    /// A datagram for this call that did not parse.
    Malformed(String),
}

/// The shared SIP socket.
pub struct SipTransport {
    socket: UdpSocket,
    /// Live calls by Call-ID.
    calls: Mutex<HashMap<String, mpsc::Sender<Inbound>>>,
    malformed: prometheus::IntCounter,
}

impl SipTransport {
    /// Binds the SIP socket.
    pub async fn bind(
        addr: SocketAddr,
        malformed: prometheus::IntCounter,
    ) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            socket: UdpSocket::bind(addr).await?,
            calls: Mutex::new(HashMap::new()),
            malformed,
        }))
    }

    /// Where the socket is bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Inbound>>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes messages with `call_id` to the returned receiver until
    /// [`SipTransport::unregister`].
    pub fn register(&self, call_id: &str) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(32);
        self.calls().insert(call_id.to_owned(), tx);
        rx
    }

    /// Stops routing messages for `call_id`.
    pub fn unregister(&self, call_id: &str) {
        self.calls().remove(call_id);
    }

    /// Number of calls registered.
    pub fn active(&self) -> usize {
        self.calls().len()
    }

    /// Sends one message.
    pub async fn send(&self, to: SocketAddr, msg: &str) {
        if let Err(e) = self.socket.send_to(msg.as_bytes(), to).await {
            tracing::warn!(error = %e, %to, "sip send failed");
        }
    }

    /// Receives until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, from) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "sip receive failed");
                        continue;
                    }
                },
            };
            let raw = &buf[..n];
            if raw.iter().all(|b| b.is_ascii_whitespace()) {
                continue; // keep-alive
            }
            match Message::parse(raw) {
                Ok(msg) => self.dispatch(msg, from).await,
                Err(e) => {
                    self.malformed.inc();
                    tracing::warn!(%from, call_id = e.call_id.as_deref().unwrap_or(""), reason = %e.reason, "malformed sip message from peer");
                    if let Some(id) = &e.call_id {
                        let tx = self.calls().get(id).cloned();
                        if let Some(tx) = tx {
                            let _ = tx.send(Inbound::Malformed(e.reason.clone())).await;
                        }
                    }
                }
            }
        }
    }

    async fn dispatch(&self, msg: Message, from: SocketAddr) {
        let tx = self.calls().get(msg.call_id()).cloned();
        match tx {
            Some(tx) => {
                let _ = tx.send(Inbound::Msg(msg, from)).await;
            }
            None => match msg.method() {
                Some("ACK") | None => {
                    tracing::debug!(
                        call_id = msg.call_id(),
                        "sip message for no live call dropped"
                    );
                }
                Some("OPTIONS") => {
                    let allow = "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n";
                    self.send(from, &response_to(&msg, 200, "OK", None, allow, ""))
                        .await;
                }
                Some("INVITE") => {
                    // Outbound only: incoming calls are not accepted.
                    self.send(from, &response_to(&msg, 603, "Decline", None, "", ""))
                        .await;
                }
                Some(_) => {
                    self.send(
                        from,
                        &response_to(&msg, 481, "Call/Transaction Does Not Exist", None, "", ""),
                    )
                    .await;
                }
            },
        }
    }
}
