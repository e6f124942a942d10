//! The scheduler's rules, free of I/O: campaigns and their settings, leads
//! as imported, the state tables of campaigns, leads and attempts, pacing
//! and fair share, and compliance (eligibility, retries).
//!
//! # Layout
//! - [`campaign`]: create and patch requests, settings validation
//! - [`lead`]: one imported row (JSON or CSV) to a lead in E.164
//! - [`state`]: the transition tables
//! - [`pacing`]: token buckets, weighted fair share
//! - [`compliance`]: whether a lead is dialable now; retry policy
//! - [`dialing`]: agent states, the abandon ratio and how near its cap
//! - [`disposition`]: disposition codes and what each does to its lead
//! - [`ivr`]: IVR flows and machine detection as campaigns set them

pub mod campaign;
pub mod compliance;
pub mod dialing;
pub mod disposition;
pub mod ivr;
pub mod lead;
pub mod pacing;
pub mod state;

pub use campaign::{
    invalid, name_ok, valid_name, CampaignPatch, ContactInput, Invalid, NewCampaign,
    NewCampaignRequest, Phone, Settings, MIN_RING_TIMEOUT_MS,
};
pub use pacing::{FairShare, Pacer};
