//! The scheduler's tables and every statement on them.
//!
//! Each state change is a conditional `UPDATE` whose `WHERE state IN (...)`
//! comes from the transition tables in [`crate::domain::state`], so two
//! scheduler replicas or a redelivered message never move a row twice.
//!
//! # Layout
//! - [`campaigns`]: campaigns, their lifecycle and progress
//! - [`leads`]: import batches, listings, callbacks
//! - [`dispatch`]: the dispatcher's lease, candidates, history, queueing
//! - [`attempts`]: claims, call events, hang-ups, leases, the reaper
//! - [`dnc`]: do-not-call entries
//! - [`idempotency`]: stored responses of `Idempotency-Key` requests
//! - [`presence`]: agents' latest state, from `agent.state`
//! - [`ledger`]: live-answered and abandoned calls per campaign and day
//! - [`dispositions`]: agents' dispositions of calls and their effects
//! - [`preview`]: preview holds: the next lead for an agent, dial, skip

pub mod attempts;
pub mod campaigns;
pub mod dispatch;
pub mod dispositions;
pub mod dnc;
pub mod idempotency;
pub mod leads;
pub mod ledger;
pub mod presence;
pub mod preview;

use dialstack_common::db::{Db, Migration};

pub use attempts::{Claim, DialTarget, HangupRequest, TransferRequest};
pub use campaigns::{Campaign, CampaignQuery, Progress, Transition};
pub use dispatch::{Candidate, Queued};
pub use dnc::{DncEntry, DncScope};
pub use leads::{ImportBatchResult, Lead, LeadAttempt, LeadQuery};

/// task-scheduler's schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "campaigns, leads, attempts",
        sql: "CREATE TABLE campaigns (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            caller_id VARCHAR(16) NOT NULL,
            max_concurrent BIGINT NOT NULL,
            max_cps DOUBLE NOT NULL,
            talk_time_ms BIGINT NOT NULL,
            ring_timeout_ms BIGINT NOT NULL,
            state VARCHAR(16) NOT NULL,
            created_at BIGINT NOT NULL,
            started_at BIGINT NULL,
            completed_at BIGINT NULL
          );
          CREATE TABLE leads (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            campaign_id VARCHAR(36) NOT NULL,
            seq BIGINT NOT NULL,
            phone VARCHAR(16) NOT NULL
          );
          CREATE INDEX leads_campaign ON leads (campaign_id, seq);
          CREATE TABLE attempts (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            campaign_id VARCHAR(36) NOT NULL,
            lead_id VARCHAR(36) NOT NULL,
            seq BIGINT NOT NULL,
            phone VARCHAR(16) NOT NULL,
            call_id VARCHAR(36) NULL,
            state VARCHAR(16) NOT NULL,
            outcome VARCHAR(32) NULL,
            reason VARCHAR(64) NULL,
            sip_status BIGINT NULL,
            claimed_by VARCHAR(128) NULL,
            lease_until BIGINT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
          );
          CREATE INDEX attempts_campaign_state ON attempts (campaign_id, state, seq);
          CREATE INDEX attempts_lease ON attempts (state, lease_until)",
    },
    Migration {
        version: 2,
        name: "campaign teams, lead owners",
        sql: "ALTER TABLE campaigns ADD COLUMN team VARCHAR(64) NULL;
              ALTER TABLE leads ADD COLUMN agent_id VARCHAR(64) NULL;
              CREATE INDEX leads_agent ON leads (agent_id, id);
              CREATE INDEX campaigns_team ON campaigns (team)",
    },
    Migration {
        version: 3,
        name: "attempts by call",
        sql: "CREATE INDEX attempts_call ON attempts (call_id)",
    },
    Migration {
        version: 4,
        name: "campaign recording",
        sql: "ALTER TABLE campaigns ADD COLUMN record BIGINT NOT NULL DEFAULT 0;
              ALTER TABLE campaigns ADD COLUMN recording_retention_days BIGINT NULL",
    },
    Migration {
        version: 5,
        name: "lead schedules, campaign rules, DNC, idempotency keys, dispatcher lease",
        sql: "ALTER TABLE campaigns ADD COLUMN priority BIGINT NOT NULL DEFAULT 1;
              ALTER TABLE campaigns ADD COLUMN calling_hours TEXT NULL;
              ALTER TABLE campaigns ADD COLUMN retry_policy TEXT NULL;
              ALTER TABLE campaigns ADD COLUMN max_attempts BIGINT NULL;
              ALTER TABLE campaigns ADD COLUMN max_attempts_per_day BIGINT NULL;
              ALTER TABLE campaigns ADD COLUMN default_region VARCHAR(2) NULL;
              ALTER TABLE campaigns ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
              CREATE INDEX campaigns_state ON campaigns (state, id);
              ALTER TABLE leads ADD COLUMN state VARCHAR(16) NOT NULL DEFAULT 'pending';
              ALTER TABLE leads ADD COLUMN lane BIGINT NOT NULL DEFAULT 10;
              ALTER TABLE leads ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;
              ALTER TABLE leads ADD COLUMN due_at BIGINT NOT NULL DEFAULT 0;
              ALTER TABLE leads ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
              ALTER TABLE leads ADD COLUMN last_outcome VARCHAR(32) NULL;
              ALTER TABLE leads ADD COLUMN last_attempt_at BIGINT NULL;
              ALTER TABLE leads ADD COLUMN timezone VARCHAR(64) NULL;
              ALTER TABLE leads ADD COLUMN zones VARCHAR(255) NOT NULL DEFAULT '';
              ALTER TABLE leads ADD COLUMN external_id VARCHAR(64) NULL;
              ALTER TABLE leads ADD COLUMN first_name VARCHAR(100) NULL;
              ALTER TABLE leads ADD COLUMN last_name VARCHAR(100) NULL;
              ALTER TABLE leads ADD COLUMN callback_at BIGINT NULL;
              ALTER TABLE leads ADD COLUMN callback_agent_id VARCHAR(64) NULL;
              ALTER TABLE leads ADD COLUMN reopened BIGINT NOT NULL DEFAULT 0;
              ALTER TABLE leads ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
              ALTER TABLE leads ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
              UPDATE leads SET attempts = (SELECT COUNT(*) FROM attempts a WHERE a.lead_id = leads.id AND a.state <> 'pending');
              UPDATE leads SET state = 'done' WHERE EXISTS (SELECT 1 FROM attempts a WHERE a.lead_id = leads.id AND a.state = 'completed');
              UPDATE leads SET state = 'dialing' WHERE EXISTS (SELECT 1 FROM attempts a WHERE a.lead_id = leads.id AND a.state IN ('queued', 'claimed', 'dialing'));
              DELETE FROM attempts WHERE state = 'pending';
              CREATE UNIQUE INDEX leads_campaign_phone ON leads (campaign_id, phone);
              CREATE INDEX leads_due ON leads (campaign_id, state, lane, due_at);
              CREATE INDEX leads_campaign_state_id ON leads (campaign_id, state, id);
              CREATE INDEX attempts_phone ON attempts (phone, created_at);
              CREATE INDEX attempts_lead ON attempts (lead_id, created_at);
              CREATE INDEX attempts_open ON attempts (state, campaign_id);
              CREATE TABLE dnc (
                phone VARCHAR(16) NOT NULL,
                scope VARCHAR(36) NOT NULL,
                expires_at BIGINT NULL,
                reason VARCHAR(200) NULL,
                created_by VARCHAR(128) NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (phone, scope)
              );
              CREATE TABLE idempotency (
                id VARCHAR(64) NOT NULL PRIMARY KEY,
                request_hash VARCHAR(64) NOT NULL,
                status BIGINT NOT NULL,
                body MEDIUMTEXT NULL,
                created_at BIGINT NOT NULL
              );
              CREATE INDEX idempotency_created ON idempotency (created_at);
              CREATE TABLE leases (
                name VARCHAR(64) NOT NULL PRIMARY KEY,
                holder VARCHAR(128) NOT NULL,
                until_ms BIGINT NOT NULL
              )",
    },
    Migration {
        version: 6,
        name: "campaign cdr retention",
        sql: "ALTER TABLE campaigns ADD COLUMN cdr_retention_days BIGINT NULL",
    },
    Migration {
        version: 7,
        name: "dialing modes, agent presence, abandon ledger, bridge times",
        sql: "ALTER TABLE campaigns ADD COLUMN mode VARCHAR(16) NOT NULL DEFAULT 'ivr';
              ALTER TABLE campaigns ADD COLUMN dial_ratio DOUBLE NOT NULL DEFAULT 1.0;
              ALTER TABLE campaigns ADD COLUMN abandon_cap_pct DOUBLE NOT NULL DEFAULT 3.0;
              ALTER TABLE campaigns ADD COLUMN skills TEXT NULL;
              ALTER TABLE campaigns ADD COLUMN abandon_after_ms BIGINT NOT NULL DEFAULT 2000;
              ALTER TABLE attempts ADD COLUMN answered_at BIGINT NULL;
              ALTER TABLE attempts ADD COLUMN bridged_at BIGINT NULL;
              ALTER TABLE attempts ADD COLUMN agent_id VARCHAR(64) NULL;
              CREATE INDEX attempts_agent ON attempts (agent_id, state);
              CREATE TABLE agent_presence (
                agent_id VARCHAR(64) NOT NULL PRIMARY KEY,
                teams TEXT NOT NULL,
                state VARCHAR(16) NOT NULL,
                since_ms BIGINT NOT NULL,
                call_id VARCHAR(64) NULL,
                updated_at BIGINT NOT NULL
              );
              CREATE INDEX agent_presence_state ON agent_presence (state);
              CREATE TABLE abandon_ledger (
                campaign_id VARCHAR(36) NOT NULL,
                day BIGINT NOT NULL,
                live BIGINT NOT NULL,
                abandoned BIGINT NOT NULL,
                PRIMARY KEY (campaign_id, day)
              )",
    },
    Migration {
        version: 8,
        name: "dispositions, preview holds",
        sql: "ALTER TABLE campaigns ADD COLUMN dispositions TEXT NULL;
              ALTER TABLE attempts ADD COLUMN disposition VARCHAR(32) NULL;
              ALTER TABLE attempts ADD COLUMN disposition_note TEXT NULL;
              ALTER TABLE attempts ADD COLUMN disposition_by VARCHAR(64) NULL;
              ALTER TABLE attempts ADD COLUMN disposition_at BIGINT NULL;
              ALTER TABLE attempts ADD COLUMN disposition_callback_at BIGINT NULL;
              ALTER TABLE leads ADD COLUMN disposition VARCHAR(32) NULL;
              ALTER TABLE leads ADD COLUMN disposition_note TEXT NULL;
              ALTER TABLE leads ADD COLUMN preview_agent_id VARCHAR(64) NULL;
              ALTER TABLE leads ADD COLUMN preview_until BIGINT NULL;
              ALTER TABLE leads ADD COLUMN skip_reason VARCHAR(200) NULL;
              CREATE INDEX leads_preview ON leads (preview_agent_id, preview_until)",
    },
    // IVR flows, machine detection and transcription (issue 12). A flow is
    // up to 64 KiB of JSON (MEDIUMTEXT: MySQL's TEXT stops at 64 KiB - 1).
    Migration {
        version: 9,
        name: "ivr flows, machine detection, lead fields, machine counts",
        sql: "ALTER TABLE campaigns ADD COLUMN ivr_flow MEDIUMTEXT NULL;
              ALTER TABLE campaigns ADD COLUMN amd TEXT NULL;
              ALTER TABLE campaigns ADD COLUMN transcribe BIGINT NOT NULL DEFAULT 0;
              ALTER TABLE leads ADD COLUMN fields TEXT NULL;
              ALTER TABLE abandon_ledger ADD COLUMN machine BIGINT NOT NULL DEFAULT 0;
              ALTER TABLE abandon_ledger ADD COLUMN amd_unsure BIGINT NOT NULL DEFAULT 0",
    },
    // A campaign's own compliance message for abandoned calls (issue 11).
    Migration {
        version: 10,
        name: "campaign compliance message",
        sql: "ALTER TABLE campaigns ADD COLUMN abandon_message TEXT NULL",
    },
];

/// The repository.
#[derive(Clone, Debug)]
pub struct Repo {
    /// The database.
    pub db: Db,
}

/// A nullable text column: MySQL reports TEXT with a binary collation as
/// BLOB, so bytes are accepted too.
pub(crate) fn text(row: &sqlx::any::AnyRow, i: usize) -> Result<Option<String>, sqlx::Error> {
    dialstack_common::db::text_column(row, i)
}

/// `?, ?, ...` for `n` values.
pub(crate) fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}
