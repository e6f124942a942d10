//! One outgoing call's dialog (RFC 3261 §12) and the requests a user agent
//! client sends in it: the INVITE (again, with credentials, after a
//! challenge), CANCEL, ACK for non-2xx (same transaction) and 2xx (its own,
//! along the route set), BYE; plus the checks an in-dialog request from the
//! peer must pass.

use std::fmt::Write as _;

use super::message::{uri_of, Message};

/// A fresh RFC 3261 branch.
pub fn new_branch() -> String {
    format!("z9hG4bK{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..))
}

/// The dialog and transaction state of one outgoing call.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag, once known.
    pub remote_tag: Option<String>,
    /// The To URI (and the initial Request-URI).
    pub remote_uri: String,
    /// Our From URI.
    pub local_uri: String,
    /// Where in-dialog requests go (the 2xx Contact), once known.
    pub remote_target: Option<String>,
    /// Route set from the 2xx's Record-Route, reversed (UAC, §12.1.2).
    pub route_set: Vec<String>,
    /// Our contact (`sip:user@ip:port`).
    pub contact: String,
    /// `ip:port` for Via.
    pub via_host: String,
    /// `UDP` or `TCP`.
    pub transport: &'static str,
    /// CSeq of the current INVITE.
    pub invite_cseq: u32,
    /// Via branch of the current INVITE.
    pub invite_branch: String,
    /// Last CSeq we used.
    pub local_cseq: u32,
    /// Last CSeq the peer used in a request, once it sent one.
    pub remote_cseq: Option<u32>,
    /// `(header name, value)` of the credentials sent with the INVITE.
    pub invite_auth: Option<(&'static str, String)>,
    /// Extra header lines of the INVITE, each ending in CRLF (an agent
    /// leg's auto-answer request).
    pub invite_headers: String,
}

/// Whether an in-dialog request is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InDialog {
    /// Matches the dialog and is in CSeq order.
    Ok,
    /// Tags do not match: not our dialog (dropped, never answered).
    TagMismatch,
    /// CSeq below the last one (answered 500, RFC 3261 §12.2.2).
    CseqOrder,
    /// The same CSeq as the last request: a retransmission, answered with
    /// the response already sent (§17.2).
    Retransmission,
}

impl Dialog {
    /// A dialog for a new call.
    pub fn new(
        call_id: &str,
        remote_uri: String,
        local_uri: String,
        contact: String,
        via_host: String,
        transport: &'static str,
    ) -> Self {
        Self {
            call_id: call_id.to_owned(),
            local_tag: format!("{:016x}", fastrand::u64(..)),
            remote_tag: None,
            remote_uri,
            local_uri,
            remote_target: None,
            route_set: Vec::new(),
            contact,
            via_host,
            transport,
            invite_cseq: 1,
            invite_branch: new_branch(),
            local_cseq: 1,
            remote_cseq: None,
            invite_auth: None,
            invite_headers: String::new(),
        }
    }

    fn common(
        &self,
        out: &mut String,
        method: &str,
        cseq: u32,
        branch: &str,
        to_tag: Option<&str>,
    ) {
        let _ = write!(
            out,
            "Via: SIP/2.0/{} {};branch={};rport\r\nMax-Forwards: 70\r\nFrom: <{}>;tag={}\r\n",
            self.transport, self.via_host, branch, self.local_uri, self.local_tag
        );
        match to_tag {
            Some(t) => {
                let _ = write!(out, "To: <{}>;tag={}\r\n", self.remote_uri, t);
            }
            None => {
                let _ = write!(out, "To: <{}>\r\n", self.remote_uri);
            }
        }
        let _ = write!(
            out,
            "Call-ID: {}\r\nCSeq: {cseq} {method}\r\n",
            self.call_id
        );
    }

    /// Request-URI and Route headers of an in-dialog request (§12.2.1.1):
    /// loose routing sends to the remote target with the route set as Route;
    /// a strict router first in the set becomes the Request-URI.
    fn in_dialog_target(&self) -> (String, String) {
        let target = self
            .remote_target
            .clone()
            .unwrap_or_else(|| self.remote_uri.clone());
        let mut routes = String::new();
        match self.route_set.first() {
            None => (target, routes),
            Some(first) if is_loose(first) => {
                for r in &self.route_set {
                    let _ = write!(routes, "Route: {r}\r\n");
                }
                (target, routes)
            }
            Some(first) => {
                for r in &self.route_set[1..] {
                    let _ = write!(routes, "Route: {r}\r\n");
                }
                let _ = write!(routes, "Route: <{target}>\r\n");
                (uri_of(first).unwrap_or(target), routes)
            }
        }
    }

    /// The URI whose host and port in-dialog requests are sent to: the first
    /// route, else the remote target.
    pub fn next_hop_uri(&self) -> String {
        match self.route_set.first() {
            Some(r) => uri_of(r).unwrap_or_default(),
            None => self
                .remote_target
                .clone()
                .unwrap_or_else(|| self.remote_uri.clone()),
        }
    }

    /// The INVITE with an SDP offer (and credentials after a challenge).
    pub fn invite(&self, sdp: &str) -> String {
        let mut out = format!("INVITE {} SIP/2.0\r\n", self.remote_uri);
        self.common(
            &mut out,
            "INVITE",
            self.invite_cseq,
            &self.invite_branch,
            None,
        );
        let _ = write!(out, "Contact: <{}>\r\n", self.contact);
        if let Some((name, value)) = &self.invite_auth {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str(&self.invite_headers);
        out.push_str("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n");
        out.push_str("User-Agent: dialstack\r\nContent-Type: application/sdp\r\n");
        let _ = write!(out, "Content-Length: {}\r\n\r\n{sdp}", sdp.len());
        out
    }

    /// Starts a new INVITE transaction for the same call (after a
    /// challenge): new branch, next CSeq.
    pub fn next_invite(&mut self, auth: (&'static str, String)) {
        self.local_cseq += 1;
        self.invite_cseq = self.local_cseq;
        self.invite_branch = new_branch();
        self.invite_auth = Some(auth);
    }

    /// ACK of a non-2xx final response: same branch as the INVITE, to the
    /// same place.
    pub fn ack_non2xx(&self, to_tag: Option<&str>) -> String {
        let mut out = format!("ACK {} SIP/2.0\r\n", self.remote_uri);
        self.common(
            &mut out,
            "ACK",
            self.invite_cseq,
            &self.invite_branch,
            to_tag,
        );
        out.push_str("Content-Length: 0\r\n\r\n");
        out
    }

    /// ACK of a 2xx: its own transaction, along the route set.
    pub fn ack_2xx(&self) -> String {
        let (ruri, routes) = self.in_dialog_target();
        let mut out = format!("ACK {ruri} SIP/2.0\r\n");
        self.common(
            &mut out,
            "ACK",
            self.invite_cseq,
            &new_branch(),
            self.remote_tag.as_deref(),
        );
        out.push_str(&routes);
        if let Some((name, value)) = &self.invite_auth {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out
    }

    /// CANCEL of the pending INVITE: same branch, CSeq number and
    /// Request-URI (§9.1).
    pub fn cancel(&self) -> String {
        let mut out = format!("CANCEL {} SIP/2.0\r\n", self.remote_uri);
        self.common(
            &mut out,
            "CANCEL",
            self.invite_cseq,
            &self.invite_branch,
            None,
        );
        out.push_str("Content-Length: 0\r\n\r\n");
        out
    }

    /// A BYE with a fresh branch and the next CSeq; returns the branch and
    /// the request. `auth` answers a challenge to an earlier BYE.
    pub fn bye(&mut self, auth: Option<(&'static str, String)>) -> (String, String) {
        self.local_cseq += 1;
        let branch = new_branch();
        let (ruri, routes) = self.in_dialog_target();
        let mut out = format!("BYE {ruri} SIP/2.0\r\n");
        self.common(
            &mut out,
            "BYE",
            self.local_cseq,
            &branch,
            self.remote_tag.as_deref(),
        );
        out.push_str(&routes);
        if let Some((name, value)) = auth {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        (branch, out)
    }

    /// A NOTIFY of the `refer` event package (RFC 3515) carrying the
    /// transfer's progress as a `message/sipfrag` status line; `final_`
    /// ends the implicit subscription. Returns the branch and the request.
    pub fn notify_refer(
        &mut self,
        refer_cseq: u32,
        code: u16,
        reason: &str,
        final_: bool,
    ) -> (String, String) {
        self.local_cseq += 1;
        let branch = new_branch();
        let (ruri, routes) = self.in_dialog_target();
        let mut out = format!("NOTIFY {ruri} SIP/2.0\r\n");
        self.common(
            &mut out,
            "NOTIFY",
            self.local_cseq,
            &branch,
            self.remote_tag.as_deref(),
        );
        out.push_str(&routes);
        let body = format!("SIP/2.0 {code} {reason}\r\n");
        let state = if final_ {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        let _ = write!(
            out,
            "Contact: <{}>\r\nEvent: refer;id={refer_cseq}\r\nSubscription-State: {state}\r\nContent-Type: message/sipfrag;version=2.0\r\nContent-Length: {}\r\n\r\n{body}",
            self.contact,
            body.len()
        );
        (branch, out)
    }

    /// The Request-URI a BYE goes to (for its digest `uri`).
    pub fn bye_uri(&self) -> String {
        self.in_dialog_target().0
    }

    /// Takes the peer's tag, Contact and Record-Route from a 2xx (or a
    /// dialog-creating 1xx).
    pub fn confirm(&mut self, resp: &Message) {
        self.remote_tag = resp.to_tag().map(str::to_owned);
        if let Some(c) = resp.contact_uri() {
            self.remote_target = Some(c);
        }
        let mut rr: Vec<String> = resp
            .header_values("record-route")
            .take(16)
            .map(str::to_owned)
            .collect();
        rr.reverse();
        self.route_set = rr;
    }

    /// Whether a response belongs to the current INVITE transaction or to
    /// the `(branch, method)` of another request we sent.
    pub fn matches_invite(&self, resp: &Message) -> bool {
        resp.top_branch() == Some(self.invite_branch.as_str())
            && resp
                .cseq()
                .is_some_and(|(n, m)| n == self.invite_cseq && (m == "INVITE" || m == "CANCEL"))
    }

    /// Checks a request from the peer inside this dialog (§12.2.2): our tag
    /// in To, theirs in From, CSeq above the last (ACK and CANCEL reuse
    /// theirs). Updates the remote CSeq when it passes.
    pub fn check_request(&mut self, req: &Message) -> InDialog {
        let ours = req.to_tag() == Some(self.local_tag.as_str());
        let theirs = match (&self.remote_tag, req.from_tag()) {
            (Some(r), Some(f)) => r == f,
            _ => false,
        };
        if !ours || !theirs {
            return InDialog::TagMismatch;
        }
        let Some((n, method)) = req.cseq() else {
            return InDialog::CseqOrder;
        };
        if method == "ACK" || method == "CANCEL" {
            return InDialog::Ok;
        }
        match self.remote_cseq {
            Some(last) if n == last => return InDialog::Retransmission,
            Some(last) if n < last => return InDialog::CseqOrder,
            _ => {}
        }
        self.remote_cseq = Some(n);
        InDialog::Ok
    }
}

fn is_loose(route: &str) -> bool {
    uri_of(route).is_some_and(|u| {
        u.split(';')
            .skip(1)
            .any(|p| p.trim().eq_ignore_ascii_case("lr"))
    })
}

/// `host:port` of a SIP URI (`sip:user@host:port;params`), port 5060 when
/// absent; `None` for a URI without a host.
pub fn host_port(uri: &str) -> Option<(String, u16)> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .unwrap_or(uri);
    let rest = rest.split([';', '?', '>']).next()?;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if hostport.is_empty() {
        return None;
    }
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => 5060,
        };
        return Some((host.to_owned(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((hostport.to_owned(), 5060)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialog() -> Dialog {
        Dialog::new(
            "c1",
            "sip:+14155550101@127.0.0.1:5080".into(),
            "sip:+14155550100@127.0.0.1".into(),
            "sip:dialstack@127.0.0.1:5060".into(),
            "127.0.0.1:5060".into(),
            "UDP",
        )
    }

    fn ok_with(extra: &str) -> Message {
        let raw = format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\nFrom: <sip:a@x>;tag=t\r\nTo: <sip:b@y>;tag=r1\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:b@10.0.0.9:5090>\r\n{extra}Content-Length: 0\r\n\r\n");
        Message::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn requests_parse_back_and_follow_the_route_set() {
        let mut d = dialog();
        let invite = Message::parse(d.invite("v=0\r\n").as_bytes()).unwrap();
        assert_eq!(invite.cseq(), Some((1, "INVITE".into())));
        assert_eq!(invite.body, b"v=0\r\n");
        d.confirm(&ok_with(
            "Record-Route: <sip:p2.example.net;lr>\r\nRecord-Route: <sip:p1.example.net:5070;lr>\r\n",
        ));
        assert_eq!(d.remote_tag.as_deref(), Some("r1"));
        assert_eq!(
            d.route_set,
            ["<sip:p1.example.net:5070;lr>", "<sip:p2.example.net;lr>"]
        );
        assert_eq!(d.next_hop_uri(), "sip:p1.example.net:5070;lr");
        let ack = Message::parse(d.ack_2xx().as_bytes()).unwrap();
        assert!(
            matches!(ack.start, super::super::message::StartLine::Request { ref uri, .. } if uri == "sip:b@10.0.0.9:5090")
        );
        let routes: Vec<_> = ack.header_values("route").collect();
        assert_eq!(
            routes,
            ["<sip:p1.example.net:5070;lr>", "<sip:p2.example.net;lr>"]
        );
        assert_eq!(ack.cseq(), Some((1, "ACK".into())));
        let (branch, bye) = d.bye(None);
        let bye = Message::parse(bye.as_bytes()).unwrap();
        assert_eq!(bye.cseq(), Some((2, "BYE".into())));
        assert_eq!(bye.top_branch(), Some(branch.as_str()));
        assert_eq!(bye.to_tag(), Some("r1"));
        let cancel = Message::parse(d.cancel().as_bytes()).unwrap();
        assert_eq!(cancel.top_branch(), Some(d.invite_branch.as_str()));
    }

    #[test]
    fn strict_router_becomes_the_request_uri() {
        let mut d = dialog();
        d.confirm(&ok_with("Record-Route: <sip:strict.example.net>\r\n"));
        let ack = Message::parse(d.ack_2xx().as_bytes()).unwrap();
        assert!(
            matches!(ack.start, super::super::message::StartLine::Request { ref uri, .. } if uri == "sip:strict.example.net")
        );
        let routes: Vec<_> = ack.header_values("route").collect();
        assert_eq!(routes, ["<sip:b@10.0.0.9:5090>"]);
    }

    #[test]
    fn a_challenge_starts_a_new_transaction() {
        let mut d = dialog();
        let first = d.invite_branch.clone();
        d.next_invite(("Authorization", "Digest x".into()));
        assert_ne!(d.invite_branch, first);
        let inv = Message::parse(d.invite("").as_bytes()).unwrap();
        assert_eq!(inv.cseq(), Some((2, "INVITE".into())));
        assert_eq!(inv.header("authorization"), Some("Digest x"));
    }

    #[test]
    fn in_dialog_requests_need_both_tags_and_cseq_order() {
        let mut d = dialog();
        d.confirm(&ok_with(""));
        let req = |from_tag: &str, to_tag: &str, cseq: u32, m: &str| {
            let raw = format!("{m} sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKq\r\nFrom: <sip:b@y>;tag={from_tag}\r\nTo: <sip:a@x>;tag={to_tag}\r\nCall-ID: c1\r\nCSeq: {cseq} {m}\r\n\r\n");
            Message::parse(raw.as_bytes()).unwrap()
        };
        let lt = d.local_tag.clone();
        assert_eq!(
            d.check_request(&req("r1", "other", 5, "BYE")),
            InDialog::TagMismatch
        );
        assert_eq!(
            d.check_request(&req("rX", &lt, 5, "BYE")),
            InDialog::TagMismatch
        );
        assert_eq!(d.check_request(&req("r1", &lt, 5, "INVITE")), InDialog::Ok);
        assert_eq!(d.check_request(&req("r1", &lt, 5, "ACK")), InDialog::Ok);
        assert_eq!(
            d.check_request(&req("r1", &lt, 5, "INVITE")),
            InDialog::Retransmission
        );
        assert_eq!(
            d.check_request(&req("r1", &lt, 4, "BYE")),
            InDialog::CseqOrder
        );
        assert_eq!(d.check_request(&req("r1", &lt, 6, "BYE")), InDialog::Ok);
    }

    #[test]
    fn host_ports() {
        assert_eq!(
            host_port("sip:b@10.0.0.9:5090"),
            Some(("10.0.0.9".into(), 5090))
        );
        assert_eq!(
            host_port("sip:p1.example.net;lr"),
            Some(("p1.example.net".into(), 5060))
        );
        assert_eq!(
            host_port("sip:[::1]:5070;transport=tcp"),
            Some(("::1".into(), 5070))
        );
        assert_eq!(host_port("sip:u@h:notaport"), None);
        assert_eq!(host_port("sip:"), None);
    }
}
