//! A token issuer for tests of one service without user-service: it signs
//! tokens of any role and teams with its own key and serves that key as a
//! JWKS on loopback, over plain HTTP or over https ([`TestIssuer::start_https`]).

use std::time::Duration;

use dialstack_common::auth::{new_claims, Jwks, Role, SigningKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A JWKS endpoint and the key behind it. The server stops when this is
/// dropped.
pub struct TestIssuer {
    /// The JWKS URL, for `DIALSTACK_JWKS_URL`.
    pub jwks_url: String,
    key: SigningKey,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestIssuer {
    /// Starts serving a fresh key over plain HTTP.
    pub async fn start() -> Self {
        Self::serve(None).await
    }

    /// Starts serving a fresh key over https, with `acceptor`'s certificate.
    pub async fn start_https(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        Self::serve(Some(acceptor)).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let key = SigningKey::generate();
        let body = serde_json::to_vec(&Jwks {
            keys: vec![key.jwk()],
            revoked: Vec::new(),
        })
        .expect("JWKS serializes");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let body = body.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => answer(sock, &body).await,
                        // A client that refuses the certificate ends here.
                        Some(tls) => {
                            if let Ok(sock) = tls.accept(sock).await {
                                answer(sock, &body).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            jwks_url: format!("{scheme}://{addr}/.well-known/jwks.json"),
            key,
            task,
        }
    }

    /// A token for `sub` with `role` and `teams`, valid for ten minutes.
    pub fn token(&self, sub: &str, role: Role, teams: &[&str]) -> String {
        let mut claims = new_claims(sub, role, Duration::from_secs(600));
        claims.teams = teams.iter().map(|t| (*t).to_owned()).collect();
        self.key.sign(&claims)
    }
}

/// Reads the request head (bounded), then answers with `body` and closes.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S, body: &[u8]) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = sock.write_all(reply.as_bytes()).await;
    let _ = sock.write_all(body).await;
    let _ = sock.shutdown().await;
}
