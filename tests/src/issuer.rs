//! A token issuer for tests of one service without user-service: it signs
//! tokens of any role and teams with its own key and serves that key as a
//! JWKS over plain HTTP on loopback.

use std::time::Duration;

use dialstack_common::auth::{new_claims, Jwks, Role, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    /// Starts serving a fresh key.
    pub async fn start() -> Self {
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
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let body = body.clone();
                tokio::spawn(async move {
                    // Read the request head (bounded), then answer and close.
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
                    let _ = sock.write_all(&body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Self {
            jwks_url: format!("http://{addr}/.well-known/jwks.json"),
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
