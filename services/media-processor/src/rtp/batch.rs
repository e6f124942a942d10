//! Batched, timestamped reads of one call's RTP socket: one `recvmmsg`
//! (MSG_DONTWAIT) per 20 ms playout tick takes every datagram queued since
//! the last tick, each with the kernel's arrival time (`SO_TIMESTAMPNS`), so
//! the media loop wakes once per tick instead of once per packet plus once
//! per tick, and jitter is still measured on true arrival times. The
//! buffers and headers are allocated once per call.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage,
};
use nix::sys::time::TimeSpec;

/// Datagrams per `recvmmsg`: two ticks' worth of 20 ms packets plus
/// strays; more are read by the next call within the same tick.
pub const BATCH: usize = 8;
/// Largest datagram kept (a bigger one is truncated, and is no G.711 RTP).
pub const DATAGRAM: usize = 1_500;

/// One datagram read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Datagram {
    /// Bytes in its buffer.
    pub len: usize,
    /// Sender.
    pub from: Option<SocketAddr>,
    /// Kernel arrival time (µs since the Unix epoch), when the kernel gave one.
    pub arrival_unix_us: Option<u64>,
}

thread_local! {
    // The message headers hold raw pointers, so they are not Send and cannot
    // live in a call's task across an await: each runtime thread keeps one
    // set, allocated once, used only inside the synchronous `recv`.
    static HEADERS: std::cell::RefCell<MultiHeaders<SockaddrStorage>> =
        std::cell::RefCell::new(MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(TimeSpec))));
}

/// The per-call reader.
pub struct BatchReceiver {
    bufs: Box<[[u8; DATAGRAM]; BATCH]>,
    got: [Datagram; BATCH],
}

impl BatchReceiver {
    /// A reader for `sock`, asking the kernel for arrival times.
    pub fn new(sock: &UdpSocket) -> std::io::Result<Self> {
        setsockopt(sock.as_raw_fd(), sockopt::ReceiveTimestampns, &true)
            .map_err(std::io::Error::from)?;
        sock.set_nonblocking(true)?;
        Ok(Self {
            bufs: Box::new([[0u8; DATAGRAM]; BATCH]),
            got: [Datagram::default(); BATCH],
        })
    }

    /// Reads what is queued, at most [`BATCH`] datagrams, without
    /// waiting; 0 when nothing is.
    pub fn recv(&mut self, sock: &UdpSocket) -> usize {
        let Self { bufs, got } = self;
        HEADERS.with(|headers| {
            let Ok(mut headers) = headers.try_borrow_mut() else {
                return 0;
            };
            let mut it = bufs.iter_mut();
            let slices: [[std::io::IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
                [std::io::IoSliceMut::new(
                    it.next().map_or(&mut [][..], |b| &mut b[..]),
                )]
            });
            let Ok(results) = recvmmsg(
                sock.as_raw_fd(),
                &mut headers,
                slices.iter(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) else {
                return 0;
            };
            let mut n = 0;
            for r in results {
                let mut arrival = None;
                for c in r.cmsgs() {
                    if let ControlMessageOwned::ScmTimestampns(ts) = c {
                        let us = ts.tv_sec() * 1_000_000 + ts.tv_nsec() / 1_000;
                        arrival = u64::try_from(us).ok();
                    }
                }
                let from = r.address.and_then(|a| {
                    if let Some(v4) = a.as_sockaddr_in() {
                        Some(SocketAddr::V4((*v4).into()))
                    } else {
                        a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
                    }
                });
                if n < BATCH {
                    got[n] = Datagram {
                        len: r.bytes.min(DATAGRAM),
                        from,
                        arrival_unix_us: arrival,
                    };
                    n += 1;
                }
            }
            n
        })
    }

    /// Datagram `i` of the last [`Self::recv`] and its bytes.
    pub fn get(&self, i: usize) -> (Datagram, &[u8]) {
        let d = self.got[i.min(BATCH - 1)];
        (d, &self.bufs[i.min(BATCH - 1)][..d.len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_is_queued_with_sources_and_arrival_times() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut r = BatchReceiver::new(&rx).unwrap();
        assert_eq!(r.recv(&rx), 0, "nothing queued: no wait, nothing read");
        let to = rx.local_addr().unwrap();
        let now_us = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64
        };
        let sent_at = now_us();
        for i in 0..(BATCH + 3) {
            tx.send_to(&vec![i as u8; 10 + i], to).unwrap();
        }
        tx.send_to(&[0u8; 3_000], to).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut seen = Vec::new();
        loop {
            let n = r.recv(&rx);
            if n == 0 {
                break;
            }
            for i in 0..n {
                let (d, bytes) = r.get(i);
                assert_eq!(d.from, Some(tx.local_addr().unwrap()));
                // The kernel's arrival time (or, while the kernel is still
                // switching timestamps on, the time of the read).
                let at = d.arrival_unix_us.expect("kernel timestamp");
                assert!(
                    at + 1_000 >= sent_at && at <= now_us(),
                    "arrival {at} after the send at {sent_at}"
                );
                seen.push(bytes.to_vec());
            }
        }
        assert_eq!(seen.len(), BATCH + 4, "every datagram, over several reads");
        for (i, s) in seen.iter().take(BATCH + 3).enumerate() {
            assert_eq!(s, &vec![i as u8; 10 + i]);
        }
        assert_eq!(
            seen.last().unwrap().len(),
            DATAGRAM,
            "an oversized one is cut"
        );
    }
}
