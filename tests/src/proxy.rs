//! A TCP proxy that a test can take down and bring back, to play a broker
//! outage without stopping the shared broker other tests use.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:port` to `upstream` while up.
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    upstream: SocketAddr,
    /// The accept loop and every forwarding task, aborted by `down`.
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Starts forwarding on a free port.
    pub async fn start(upstream: SocketAddr) -> Self {
        let p = Self {
            port: crate::free_tcp_port(),
            upstream,
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        p.up().await;
        p
    }

    /// Starts accepting again.
    pub async fn up(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("proxy port free again");
        let upstream = self.upstream;
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                tasks.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(accept);
    }

    /// Stops accepting and cuts every open connection.
    pub fn down(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

/// Forwards `127.0.0.1:port` to `upstream`, and once, on the first
/// connection whose client has sent `after` and then sends a chunk holding
/// `cut_at`, forwards that chunk to the server but cuts the connection
/// before the server's answer reaches the client: the client's request
/// took effect while, to the client, it failed (a database commit whose
/// acknowledgement is lost). Every other byte is forwarded as is.
pub struct CuttingProxy {
    /// The port clients connect to.
    pub port: u16,
    /// Whether the cut has happened.
    pub cut: Arc<std::sync::atomic::AtomicBool>,
    accept: JoinHandle<()>,
}

impl CuttingProxy {
    /// Starts forwarding on a free port.
    pub async fn start(upstream: SocketAddr, after: &[u8], cut_at: &[u8]) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = crate::free_tcp_port();
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("proxy port");
        let cut = Arc::new(AtomicBool::new(false));
        let (after, cut_at) = (after.to_vec(), cut_at.to_vec());
        let done = cut.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(out) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (after, cut_at, done) = (after.clone(), cut_at.clone(), done.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = inbound.into_split();
                    let (mut sr, mut sw) = out.into_split();
                    let mute = Arc::new(AtomicBool::new(false));
                    let muted = mute.clone();
                    // Server to client, until muted.
                    let back = tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if muted.load(Ordering::SeqCst)
                                || cw.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    });
                    // Client to server, watching for the cut.
                    let mut seen_after = false;
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        seen_after |= contains(chunk, &after);
                        let cutting = seen_after
                            && contains(chunk, &cut_at)
                            && !done.swap(true, Ordering::SeqCst);
                        if cutting {
                            mute.store(true, Ordering::SeqCst);
                        }
                        if sw.write_all(chunk).await.is_err() {
                            break;
                        }
                        if cutting {
                            // Time for the server to act on it, then the
                            // connection goes without its answer.
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                            break;
                        }
                    }
                    back.abort();
                });
            }
        });
        Self { port, cut, accept }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
