//! Call quality: what the network did to one incoming stream, and what a
//! listener would make of it.
//!
//! Everything here is pure: the caller passes packet arrival times and frame
//! outcomes in, nothing reads a clock.
//!
//! # Layout
//! - [`receiver`]: RFC 3550 receiver statistics (appendix A.1, A.3, A.8):
//!   sequence validation, expected and lost packets, interarrival jitter, the
//!   numbers a reception report block carries
//! - [`loss`]: the loss pattern after the jitter buffer (lost and late
//!   frames) and its burst ratio (ITU-T G.113 Appendix I)
//! - [`emodel`]: the E-model (ITU-T G.107) for G.711: R factor, MOS and a
//!   per-call summary
//!
//! Which loss feeds the E-model: the listener hears the frames the jitter
//! buffer had to conceal, network loss *and* late packets, so the MOS uses
//! [`LossPattern`], not [`ReceiverStats::cumulative_lost`]; the latter is
//! what RTCP reports to the peer.

pub mod emodel;
pub mod loss;
pub mod receiver;

pub use emodel::{
    mos_from_r, r_factor, summarize, QualityInputs, QualitySummary, BPL_NO_PLC, BPL_PLC,
    PACKETIZATION_MS, R_G711_NO_IMPAIRMENT,
};
pub use loss::LossPattern;
pub use receiver::{IntervalReport, ReceiverStats, CLOCK_RATE_HZ};
