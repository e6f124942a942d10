//! Background work: the dispatcher (one per deployment, by lease), the
//! call-event consumer, the reaper, and the CSV importer that streams a
//! request body into lead batches.
//!
//! # Layout
//! - [`dispatcher`]: pacing (rate, fair share, agents and the abandon cap), eligibility, queueing
//! - [`events`]: `call.*` and `agent.state` consumer (attempts, ledger, presence)
//! - [`reaper`]: stuck attempts, old idempotency keys
//! - [`importer`]: streamed CSV and JSON lead imports

pub mod dispatcher;
pub mod events;
pub mod importer;
pub mod reaper;

pub use dispatcher::{run_dispatcher, DispatcherConfig};
pub use events::{CallEvents, BINDINGS};
pub use reaper::run_reaper;
