//! dialstack-dialrules: the pure telephony rules a dialer applies before it
//! places a call. No I/O, no clock, no async: callers pass the time in.
//!
//! Owned by the task scheduler's needs (lead import, hopper eligibility,
//! dial-time checks) and kept out of `crates/common`, which is infrastructure
//! only.
//!
//! # Layout
//!
//! - [`phone`]: any written number → E.164 ([`phone::parse_phone`]), regions
//!   ([`phone::region_ok`]); a fast path for input already in E.164 form.
//! - [`zones`]: the time zones a number may ring in
//!   ([`zones::zones_for_number`]) from the calling code and, for NANP, the
//!   area code; IANA names ([`zones::parse_zone`]).
//! - [`hours`]: a campaign's calling window on the callee's wall clock
//!   ([`hours::CallingHours`]): open now in every zone, next opening.
//! - [`guard`]: the toll-fraud destination guard
//!   ([`guard::DestinationGuard`]): built-in premium-rate and satellite
//!   ranges plus the operator's allow and deny lists.
//!
//! Errors are short human-readable `String`s: every rule here answers a user
//! (a CSV row, a campaign form, a refused dial), and none has a cause to chain.
//!
//! Time zones come from chrono-tz's bundled IANA database, so nothing depends
//! on the host's tzdata.

#![forbid(unsafe_code)]

pub mod guard;
pub mod hours;
pub mod phone;
pub mod zones;

pub use chrono_tz::Tz as Zone;
pub use guard::DestinationGuard;
pub use hours::{CallingHours, Weekday};
