//! storage-service's database: the schema and one repository over it.
//!
//! # Layout
//! - [`cdrs`]: call detail records, built from call events (with quality)
//! - [`recordings`]: recording metadata from `call.recording.ready`, and
//!   the rows the retention sweep removes
//! - [`customers`]: customer profiles, their numbers and tags, the merge of
//!   `customer.upserted`, erasure and the audit of it
//! - [`retention`]: per-campaign retention from `campaign.updated`, and the
//!   batched deletes of expired CDRs (with their transcripts)
//! - [`transcripts`]: call transcripts from `call.transcript`

pub mod cdrs;
pub mod customers;
pub mod recordings;
pub mod retention;
pub mod transcripts;

use dialstack_common::db::{Db, Migration};

pub use cdrs::{stage, Applied, Cdr, CdrCursor, CdrQuery, Change, IvrResultFilter, RecordingLink};
pub use recordings::Recording;
pub use transcripts::Transcript;

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
    // The CDR table is rebuilt (index names and the phone's width change,
    // and neither engine drops an index with the same statement) with:
    // `started_at`, the earliest event time known (the INVITE's once
    // `call.dialing` is in), which orders listings and carries the time
    // filter; `customer_id`; `disposition`. Every listing filter leads an
    // index that continues with (started_at, call_id), the keyset order.
    Migration {
        version: 4,
        name: "cdr search, customers, retention, audit",
        sql: "ALTER TABLE cdrs RENAME TO cdrs_v3;
              CREATE TABLE cdrs (
                call_id VARCHAR(36) NOT NULL PRIMARY KEY,
                attempt_id VARCHAR(36) NOT NULL,
                campaign_id VARCHAR(36) NOT NULL,
                phone VARCHAR(32) NOT NULL,
                state VARCHAR(16) NOT NULL,
                state_rank BIGINT NOT NULL,
                outcome VARCHAR(32) NULL,
                reason VARCHAR(64) NULL,
                sip_status BIGINT NULL,
                started_at BIGINT NOT NULL,
                dialed_at BIGINT NULL,
                ringing_at BIGINT NULL,
                answered_at BIGINT NULL,
                ended_at BIGINT NULL,
                ring_ms BIGINT NULL,
                talk_ms BIGINT NULL,
                rtp_sent BIGINT NULL,
                rtp_received BIGINT NULL,
                team VARCHAR(64) NULL,
                agent_id VARCHAR(36) NULL,
                customer_id VARCHAR(36) NULL,
                disposition VARCHAR(64) NULL,
                mos DOUBLE NULL,
                quality VARCHAR(4000) NULL,
                updated_at BIGINT NOT NULL
              );
              INSERT INTO cdrs (call_id, attempt_id, campaign_id, phone, state, state_rank, outcome, reason, sip_status, started_at, dialed_at, ringing_at, answered_at, ended_at, ring_ms, talk_ms, rtp_sent, rtp_received, team, agent_id, mos, quality, updated_at)
                SELECT call_id, attempt_id, campaign_id, phone, state, state_rank, outcome, reason, sip_status,
                       COALESCE(dialed_at, ringing_at, answered_at, ended_at, updated_at),
                       dialed_at, ringing_at, answered_at, ended_at, ring_ms, talk_ms, rtp_sent, rtp_received, team, agent_id, mos, quality, updated_at
                FROM cdrs_v3;
              DROP TABLE cdrs_v3;
              CREATE INDEX cdrs_by_start ON cdrs (started_at, call_id);
              CREATE INDEX cdrs_by_campaign ON cdrs (campaign_id, started_at, call_id);
              CREATE INDEX cdrs_by_phone ON cdrs (phone, started_at, call_id);
              CREATE INDEX cdrs_by_agent ON cdrs (agent_id, started_at, call_id);
              CREATE INDEX cdrs_by_team ON cdrs (team, started_at, call_id);
              CREATE INDEX cdrs_by_customer ON cdrs (customer_id, started_at, call_id);
              CREATE INDEX cdrs_by_outcome ON cdrs (outcome, started_at, call_id);
              CREATE INDEX cdrs_by_disposition ON cdrs (disposition, started_at, call_id);
              CREATE INDEX cdrs_by_mos ON cdrs (mos, call_id);
              CREATE INDEX recordings_created ON recordings (created_at, call_id);
              CREATE TABLE customers (
                id VARCHAR(36) NOT NULL PRIMARY KEY,
                scope VARCHAR(64) NOT NULL,
                external_id VARCHAR(128) NULL,
                name VARCHAR(200) NOT NULL,
                name_key VARCHAR(200) NOT NULL,
                primary_phone VARCHAR(16) NULL,
                fields VARCHAR(8000) NOT NULL,
                tags VARCHAR(2000) NOT NULL,
                recording_allowed BIGINT NOT NULL,
                marketing_opt_out BIGINT NOT NULL,
                source_at BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                version BIGINT NOT NULL
              );
              CREATE UNIQUE INDEX customers_scope_external ON customers (scope, external_id);
              CREATE INDEX customers_external ON customers (external_id, id);
              CREATE INDEX customers_name ON customers (name_key, id);
              CREATE INDEX customers_scope ON customers (scope, id);
              CREATE TABLE customer_phones (
                scope VARCHAR(64) NOT NULL,
                phone VARCHAR(16) NOT NULL,
                customer_id VARCHAR(36) NOT NULL,
                PRIMARY KEY (scope, phone)
              );
              CREATE INDEX customer_phones_customer ON customer_phones (customer_id, phone);
              CREATE INDEX customer_phones_phone ON customer_phones (phone, customer_id);
              CREATE TABLE customer_tags (
                tag VARCHAR(64) NOT NULL,
                customer_id VARCHAR(36) NOT NULL,
                PRIMARY KEY (tag, customer_id)
              );
              CREATE INDEX customer_tags_customer ON customer_tags (customer_id, tag);
              CREATE TABLE campaign_retention (
                campaign_id VARCHAR(36) NOT NULL PRIMARY KEY,
                cdr_retention_days BIGINT NULL,
                version BIGINT NOT NULL
              );
              CREATE TABLE storage_audit (
                id VARCHAR(36) NOT NULL PRIMARY KEY,
                at BIGINT NOT NULL,
                actor VARCHAR(64) NOT NULL,
                action VARCHAR(32) NOT NULL,
                subject VARCHAR(64) NOT NULL,
                detail VARCHAR(2000) NOT NULL
              );
              CREATE INDEX storage_audit_subject ON storage_audit (subject, at)",
    },
    // The agent leg of bridged calls (issue 11).
    Migration {
        version: 5,
        name: "cdr agent leg",
        sql: "ALTER TABLE cdrs ADD COLUMN agent_leg VARCHAR(4096) NULL",
    },
    // IVR, machine detection and transcripts (issue 12). `ivr` and `amd`
    // are the event's objects; `ivr_result` (the IVR's `var=value&...`
    // summary) and `amd_result` (`human`, `machine`, `unsure`) are their
    // searchable parts, each leading an index that continues with the
    // keyset order. A transcript is up to 64 KiB (MEDIUMTEXT).
    Migration {
        version: 6,
        name: "cdr ivr and amd, transcripts",
        sql: "ALTER TABLE cdrs ADD COLUMN ivr TEXT NULL;
              ALTER TABLE cdrs ADD COLUMN ivr_result VARCHAR(512) NULL;
              ALTER TABLE cdrs ADD COLUMN amd VARCHAR(4096) NULL;
              ALTER TABLE cdrs ADD COLUMN amd_result VARCHAR(16) NULL;
              CREATE INDEX cdrs_by_ivr_result ON cdrs (ivr_result, started_at, call_id);
              CREATE INDEX cdrs_by_amd_result ON cdrs (amd_result, started_at, call_id);
              CREATE TABLE transcripts (
                call_id VARCHAR(36) NOT NULL PRIMARY KEY,
                text MEDIUMTEXT NOT NULL,
                confidence DOUBLE NULL,
                engine VARCHAR(100) NOT NULL,
                audio_seconds DOUBLE NOT NULL,
                created_at BIGINT NOT NULL
              )",
    },
];

/// The repository.
#[derive(Clone, Debug)]
pub struct Repo {
    /// The database.
    pub db: Db,
}
