//! user-service's repository: one [`Repo`] over the service's database, its
//! methods grouped by aggregate, and the schema.
//!
//! # Layout
//! - [`migrations`]: the schema, in version order
//! - [`users`]: accounts, roles, supervisors' teams, password hashes
//! - [`sessions`]: refresh tokens (one family per login, rotated atomically)
//! - [`throttle`]: login throttling counters (atomic charge and refund)
//! - [`audit`]: the audit log
//! - [`agents`]: agent profiles, state and heartbeats (with their outbox events)
//! - [`reservations`]: reserving an available agent for a call, and lapsing
//!   reservations not used in time
//! - [`teams`]: team settings
//! - [`keys`]: signing keys (seeds sealed with the key-encryption key, see
//!   [`crate::kek`]) and access-token revocations
//!
//! A change that ends sessions (role, password, deletion) revokes the refresh
//! tokens and writes the access-token revocation in the same transaction as
//! the change itself.

pub mod agents;
pub mod audit;
pub mod keys;
pub mod migrations;
pub mod reservations;
pub mod sessions;
pub mod teams;
pub mod throttle;
pub mod users;

pub use agents::{Agent, AgentCall, AgentRow, StateChange};
pub use audit::AuditEntry;
pub use keys::KeyError;
pub use migrations::MIGRATIONS;
pub use reservations::Reservation;
pub use sessions::RefreshUse;
pub use teams::Team;
pub use throttle::{Admission, Gate};
pub use users::{User, UserChange, UserUpdate};

use dialstack_common::db::{Db, Dialect};

use crate::kek::SeedSealer;

/// The repository.
#[derive(Clone, Debug)]
pub struct Repo {
    db: Db,
    /// How signing seeds are stored.
    seeds: SeedSealer,
}

impl Repo {
    /// A repository over `db` that stores signing seeds in plaintext (see
    /// [`Repo::with_seeds`]).
    pub fn new(db: Db) -> Self {
        Self {
            db,
            seeds: SeedSealer::plaintext(),
        }
    }

    /// The same repository, sealing signing seeds with `seeds`.
    pub fn with_seeds(self, seeds: SeedSealer) -> Self {
        Self { seeds, ..self }
    }

    /// The SQL engine behind the repository.
    pub fn dialect(&self) -> Dialect {
        self.db.dialect
    }

    /// ` FOR UPDATE` where the engine has row locks (MySQL).
    fn for_update(&self) -> &'static str {
        match self.db.dialect {
            Dialect::MySql => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }
}

/// `s` cut to at most `max` characters (the audit columns' sizes).
fn clip(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// Teams are stored as `,a,b,` so that `LIKE '%,a,%'` finds members.
fn join_teams(teams: &[String]) -> String {
    if teams.is_empty() {
        String::new()
    } else {
        format!(",{},", teams.join(","))
    }
}

fn split_teams(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}
