//! The `sim://` trunk: a simulated carrier on loopback that answers, rings,
//! refuses or gives up with configurable rates, and sends real RTP to answered
//! calls. It speaks real SIP over UDP, so calls to it exercise the same code
//! as calls to a carrier. It exists for the demo, load tests and pacing
//! studies, and says so in its logs.
//!
//! `sim://?answer=0.75&busy=0.1&no_answer=0.1&reject=0.05&ring_ms=500&no_answer_ms=3000`
//! (when any rate is given, the rates not given are 0; whatever is left after
//! the four is `503` failure).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::rtp::send_tone;
use crate::sip::{response_to, Message};

/// The simulated carrier's behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Share of calls answered.
    pub answer: f64,
    /// Share refused with 486.
    pub busy: f64,
    /// Share that ring out (480 after `no_answer_ms`).
    pub no_answer: f64,
    /// Share refused with 403.
    pub reject: f64,
    /// Ring time before answer or busy.
    pub ring_ms: u64,
    /// Ring time before 480.
    pub no_answer_ms: u64,
}

impl SimConfig {
    /// Parses a `sim://` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("sim://").ok_or("must start with sim://")?;
        let query = rest.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut c = Self {
            answer: 0.75,
            busy: 0.1,
            no_answer: 0.1,
            reject: 0.05,
            ring_ms: 500,
            no_answer_ms: 3_000,
        };
        let rate_keys = ["answer", "busy", "no_answer", "reject"];
        if query
            .split('&')
            .any(|p| rate_keys.contains(&p.split('=').next().unwrap_or("")))
        {
            c.answer = 0.0;
            c.busy = 0.0;
            c.no_answer = 0.0;
            c.reject = 0.0;
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or(format!("{pair:?} is not key=value"))?;
            let rate = || {
                v.parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or(format!("{k} must be a rate between 0 and 1"))
            };
            let ms = || {
                v.parse::<u64>()
                    .ok()
                    .filter(|m| *m <= 600_000)
                    .ok_or(format!("{k} must be milliseconds"))
            };
            match k {
                "answer" => c.answer = rate()?,
                "busy" => c.busy = rate()?,
                "no_answer" => c.no_answer = rate()?,
                "reject" => c.reject = rate()?,
                "ring_ms" => c.ring_ms = ms()?,
                "no_answer_ms" => c.no_answer_ms = ms()?,
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        if c.answer + c.busy + c.no_answer + c.reject > 1.0 + 1e-9 {
            return Err("rates add up to more than 1".into());
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Answer,
    Busy,
    NoAnswer,
    Reject,
    Fail,
}

impl SimConfig {
    fn draw(&self, x: f64) -> Fate {
        let mut acc = self.answer;
        if x < acc {
            return Fate::Answer;
        }
        acc += self.busy;
        if x < acc {
            return Fate::Busy;
        }
        acc += self.no_answer;
        if x < acc {
            return Fate::NoAnswer;
        }
        acc += self.reject;
        if x < acc {
            return Fate::Reject;
        }
        Fate::Fail
    }
}

struct SimCall {
    invite: Message,
    from: SocketAddr,
    tag: String,
    /// Ends the ringing timer or the media stream.
    stop: CancellationToken,
    answered: bool,
}

/// The running simulated carrier.
pub struct SimTrunk {
    sip: Arc<UdpSocket>,
    rtp: Arc<UdpSocket>,
    config: SimConfig,
    calls: Mutex<HashMap<String, SimCall>>,
}

impl SimTrunk {
    /// Starts the simulated carrier on `127.0.0.1` and returns its SIP address.
    pub async fn start(
        config: SimConfig,
        shutdown: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let sip = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = sip.local_addr()?;
        tracing::warn!(%addr, ?config, "sim:// trunk is a simulated carrier: no real calls are placed");
        let trunk = Arc::new(Self {
            sip,
            rtp,
            config,
            calls: Mutex::new(HashMap::new()),
        });
        tokio::spawn(trunk.clone().run(shutdown));
        Ok(addr)
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, SimCall>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send(&self, to: SocketAddr, msg: String) {
        let _ = self.sip.send_to(msg.as_bytes(), to).await;
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut buf = vec![0u8; 65_535];
        let drain = self.rtp.clone();
        let drain_stop = shutdown.clone();
        // RTP sent to the sim's own port is read and discarded.
        tokio::spawn(async move {
            let mut b = vec![0u8; 2048];
            loop {
                tokio::select! {
                    _ = drain_stop.cancelled() => return,
                    _ = drain.recv_from(&mut b) => {}
                }
            }
        });
        loop {
            let (n, from) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.sip.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
            };
            let Ok(msg) = Message::parse(&buf[..n]) else {
                tracing::debug!("sim trunk ignored a malformed message");
                continue;
            };
            match msg.method() {
                Some("INVITE") => self.clone().on_invite(msg, from).await,
                Some("ACK") => self.on_ack(&msg),
                Some("CANCEL") => self.on_cancel(msg, from).await,
                Some("BYE") => self.on_bye(msg, from).await,
                Some(_) => {
                    self.send(
                        from,
                        response_to(&msg, 405, "Method Not Allowed", None, "", ""),
                    )
                    .await
                }
                None => {}
            }
        }
    }

    async fn on_invite(self: Arc<Self>, msg: Message, from: SocketAddr) {
        let call_id = msg.call_id().to_owned();
        if self.calls().contains_key(&call_id) {
            return; // retransmission: the responses already sent or scheduled stand
        }
        let tag = format!("sim{:x}", fastrand::u64(..));
        let stop = CancellationToken::new();
        self.calls().insert(
            call_id.clone(),
            SimCall {
                invite: msg.clone(),
                from,
                tag: tag.clone(),
                stop: stop.clone(),
                answered: false,
            },
        );
        self.send(from, response_to(&msg, 100, "Trying", None, "", ""))
            .await;
        let fate = self.config.draw(fastrand::f64());
        let ring = Duration::from_millis(if fate == Fate::NoAnswer {
            self.config.no_answer_ms
        } else {
            self.config.ring_ms
        });
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.send(from, response_to(&msg, 180, "Ringing", Some(&tag), "", ""))
                .await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(ring) => {}
            }
            let (code, reason) = match fate {
                Fate::Answer => (200, "OK"),
                Fate::Busy => (486, "Busy Here"),
                Fate::NoAnswer => (480, "Temporarily Unavailable"),
                Fate::Reject => (403, "Forbidden"),
                Fate::Fail => (503, "Service Unavailable"),
            };
            if code == 200 {
                let port = self.rtp.local_addr().map(|a| a.port()).unwrap_or(0);
                let sdp = format!(
                    "v=0\r\no=sim 1 1 IN IP4 127.0.0.1\r\ns=sim\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
                );
                let contact = format!(
                    "Contact: <sip:sim@{}>\r\nContent-Type: application/sdp\r\n",
                    self.sip
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                );
                if let Some(c) = self.calls().get_mut(msg.call_id()) {
                    c.answered = true;
                }
                self.send(
                    from,
                    response_to(&msg, 200, reason, Some(&tag), &contact, &sdp),
                )
                .await;
            } else {
                self.send(from, response_to(&msg, code, reason, Some(&tag), "", ""))
                    .await;
            }
        });
    }

    fn on_ack(&self, msg: &Message) {
        let mut calls = self.calls();
        let Some(call) = calls.get_mut(msg.call_id()) else {
            return;
        };
        if !call.answered {
            // ACK of a failure response ends the simulated call.
            calls.remove(msg.call_id());
            return;
        }
        let Ok(offer) = crate::sip::sdp::parse_remote(call.invite.body_str().unwrap_or("")) else {
            return;
        };
        let stop = CancellationToken::new();
        call.stop = stop.clone();
        tokio::spawn(send_tone(
            self.rtp.clone(),
            offer.addr,
            offer.payload_type,
            stop,
        ));
    }

    async fn on_cancel(&self, msg: Message, from: SocketAddr) {
        self.send(from, response_to(&msg, 200, "OK", None, "", ""))
            .await;
        let call = self.calls().remove(msg.call_id());
        if let Some(call) = call {
            call.stop.cancel();
            if !call.answered {
                let resp = response_to(
                    &call.invite,
                    487,
                    "Request Terminated",
                    Some(&call.tag),
                    "",
                    "",
                );
                self.send(call.from, resp).await;
            }
        }
    }

    async fn on_bye(&self, msg: Message, from: SocketAddr) {
        let call = self.calls().remove(msg.call_id());
        let code = if let Some(call) = call {
            call.stop.cancel();
            200
        } else {
            481
        };
        let reason = if code == 200 {
            "OK"
        } else {
            "Call/Transaction Does Not Exist"
        };
        self.send(from, response_to(&msg, code, reason, None, "", ""))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_nonsense() {
        let c = SimConfig::parse("sim://?answer=1&ring_ms=5").unwrap();
        assert_eq!(c.answer, 1.0);
        assert_eq!(c.busy, 0.0);
        assert_eq!(c.ring_ms, 5);
        assert!(SimConfig::parse("sim://").is_ok());
        assert!(SimConfig::parse("sim://?answer=2").is_err());
        assert!(SimConfig::parse("sim://?answer=0.9&busy=0.9").is_err());
        assert!(SimConfig::parse("sim://?colour=red").is_err());
        assert!(SimConfig::parse("sim://?ring_ms=-1").is_err());
    }

    #[test]
    fn draws_follow_the_rates() {
        let c = SimConfig::parse("sim://?answer=0.5&busy=0.2&no_answer=0.1&reject=0.1").unwrap();
        assert_eq!(c.draw(0.0), Fate::Answer);
        assert_eq!(c.draw(0.6), Fate::Busy);
        assert_eq!(c.draw(0.75), Fate::NoAnswer);
        assert_eq!(c.draw(0.85), Fate::Reject);
        assert_eq!(c.draw(0.95), Fate::Fail);
    }
}
