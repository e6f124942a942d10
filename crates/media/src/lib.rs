//! The audio path of one call, as pure code (no sockets, no clock of its
//! own: every function takes the time it should act at), so that every
//! rule is tested deterministically:
//!
//! - [`amd`]: answering-machine detection from the cadence of the callee's
//!   first seconds of audio, and the voicemail beep
//! - [`dtmf`]: DTMF keys in band (Goertzel detector, tone generator) and as
//!   RFC 4733 telephone events
//! - [`g711`]: µ-law and A-law encode and decode tables
//! - [`jitter`]: the jitter buffer (fixed or adaptive playout delay) with
//!   G.711 Appendix I style loss concealment ([`plc`])
//! - [`quality`]: RFC 3550 receiver statistics and the E-model (ITU-T G.107)
//! - [`rtcp`]: sender and receiver reports, round-trip time

pub mod amd;
pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod plc;
pub mod quality;
pub mod resample;
pub mod rtcp;
