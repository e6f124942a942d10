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
