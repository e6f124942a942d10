//! The SIP edge: a hand-written user agent client (RFC 3261) for outbound
//! calls, hardened for the open network.
//!
//! - [`message`]: bounded, total parser and the response builder
//! - [`sdp`]: offer/answer (RFC 3264): our offer, the peer's media, hold
//! - [`dialog`]: the dialog, route set and the requests we send in it
//! - [`digest`]: Digest authentication (MD5, SHA-256, `qop=auth`)
//! - [`keepalive`]: OPTIONS to the trunk, trunk health
//! - [`tcp`]: SIP over TCP to the trunk, stream framing
//! - [`transport`]: the shared socket, its supervised receive loop and the
//!   source checks

pub mod dialog;
pub mod digest;
pub mod keepalive;
pub mod message;
pub mod sdp;
pub mod tcp;
pub mod transport;

pub use dialog::{new_branch, Dialog};
pub use message::{response_to, Message, StartLine};
pub use transport::{Inbound, SipMetrics, SipTransport};
