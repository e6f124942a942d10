//! storage-service's database: the schema and one repository over it.
//!
//! # Layout
//! - [`cdrs`]: call detail records, built from call events (with quality)
//! - [`recordings`]: recording metadata from `call.recording.ready`, and
//!   the rows the retention sweep removes

pub mod cdrs;
pub mod recordings;

use dialstack_common::db::{Db, Migration};

pub use cdrs::{stage, Applied, Cdr, CdrQuery, Change, RecordingLink};
pub use recordings::Recording;

/// storage-service's schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "cdrs",
        sql: "CREATE TABLE cdrs (
            call_id VARCHAR(36) NOT NULL PRIMARY KEY,
            attempt_id VARCHAR(36) NOT NULL,
            campaign_id VARCHAR(36) NOT NULL,
            phone VARCHAR(16) NOT NULL,
            state VARCHAR(16) NOT NULL,
            state_rank BIGINT NOT NULL,
            outcome VARCHAR(32) NULL,
            reason VARCHAR(64) NULL,
            sip_status BIGINT NULL,
            dialed_at BIGINT NULL,
            ringing_at BIGINT NULL,
            answered_at BIGINT NULL,
            ended_at BIGINT NULL,
            ring_ms BIGINT NULL,
            talk_ms BIGINT NULL,
            rtp_sent BIGINT NULL,
            rtp_received BIGINT NULL,
            updated_at BIGINT NOT NULL
          );
          CREATE INDEX cdrs_campaign ON cdrs (campaign_id, call_id);
          CREATE INDEX cdrs_outcome ON cdrs (outcome, call_id)",
    },
    Migration {
        version: 2,
        name: "cdr team and agent",
        sql: "ALTER TABLE cdrs ADD COLUMN team VARCHAR(64) NULL;
              ALTER TABLE cdrs ADD COLUMN agent_id VARCHAR(36) NULL;
              CREATE INDEX cdrs_agent ON cdrs (agent_id, call_id);
              CREATE INDEX cdrs_team ON cdrs (team, call_id)",
    },
    // Quality is kept as the event's JSON object (its fields belong to the
    // contract and grow with it) plus `mos` as a column to filter on.
    Migration {
        version: 3,
        name: "recordings and call quality",
        sql: "CREATE TABLE recordings (
                call_id VARCHAR(36) NOT NULL PRIMARY KEY,
                url VARCHAR(1024) NOT NULL,
                duration_ms BIGINT NOT NULL,
                bytes BIGINT NOT NULL,
                sha256 VARCHAR(64) NOT NULL,
                created_at BIGINT NOT NULL,
                delete_after BIGINT NULL
              );
              CREATE INDEX recordings_delete_after ON recordings (delete_after, call_id);
              ALTER TABLE cdrs ADD COLUMN mos DOUBLE NULL;
              ALTER TABLE cdrs ADD COLUMN quality VARCHAR(4000) NULL;
              CREATE INDEX cdrs_mos ON cdrs (mos, call_id)",
    },
];

/// The repository.
#[derive(Clone, Debug)]
pub struct Repo {
    /// The database.
    pub db: Db,
}
