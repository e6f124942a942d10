//! Login throttling: slows guessing without letting a stranger lock an
//! owner out.
//!
//! Every attempt at a password (login, client credentials, the current
//! password of a change) passes gates, each an atomic counter
//! ([`crate::db::throttle`]) charged before the password is checked:
//! - **account + address pair**: the first `free_attempts` (5) go at once,
//!   then each must wait 1 s, 2 s, 4 s... up to `backoff_max` (15 min) after
//!   the one before. Only the guesser's own pair slows down: the owner,
//!   elsewhere, is not touched by it;
//! - **address**: `ip_per_hour` (1,000) attempts an hour from one address,
//!   across accounts (password spraying);
//! - **account**: `account_per_hour` (100) attempts an hour on one account
//!   from addresses it has *not* logged in from in the last 30 days (a guess
//!   spread over many addresses). Addresses the account used recently are
//!   trusted and skip this gate, so the owner keeps getting in. Service
//!   accounts, which only take client credentials, skip it too: their
//!   secrets are machine-generated, and a stranger failing on
//!   `dialstack-service` must not stop the media processor's claims.
//!
//! A right password, or an attempt never checked (the hashing pool was
//! busy), refunds its charges; a right password also resets its pair and
//! trusts its address for the account.

use std::time::Duration;

use crate::db::{Admission, Gate, Repo};
use crate::hashing::Lane;

/// How long a successful login trusts its address for the account.
pub const TRUST: Duration = Duration::from_secs(30 * 24 * 3600);
/// The counting window of the address and account gates, and the longest a
/// pair's backoff lasts without a new attempt.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// The first wait of a pair's backoff; it doubles each attempt.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// The limits, from `DIALSTACK_LOGIN_*` (see the crate doc).
#[derive(Debug, Clone, PartialEq)]
pub struct LoginLimits {
    /// Attempts an hour from one address.
    pub ip_per_hour: i64,
    /// Attempts an hour on one account from untrusted addresses.
    pub account_per_hour: i64,
    /// Attempts of one pair before its backoff starts.
    pub free_attempts: i64,
    /// The longest wait of a pair's backoff.
    pub backoff_max: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            ip_per_hour: 1_000,
            account_per_hour: 100,
            free_attempts: 5,
            backoff_max: Duration::from_secs(900),
        }
    }
}

/// Which kind of credential is presented; it decides the gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A person's password (login, password change).
    Password,
    /// A service account's client secret.
    ClientSecret,
}

impl LoginLimits {
    /// The wait after each attempt of a pair, as `(attempt, wait ms)` steps.
    fn backoff(&self) -> Vec<(i64, i64)> {
        let base = BACKOFF_BASE.as_millis() as i64;
        let max = (self.backoff_max.as_millis() as i64).max(base);
        let mut steps = Vec::new();
        let mut wait = base;
        let mut n = self.free_attempts.max(1);
        while wait < max {
            steps.push((n, wait));
            wait *= 2;
            n += 1;
        }
        steps.push((n, max));
        steps
    }

    /// The gate of one account and address pair.
    pub fn pair(&self, account: &str, ip: &str) -> Gate {
        Gate {
            key: pair_key(account, ip),
            cap: i64::MAX,
            window_ms: WINDOW.as_millis() as i64 + self.backoff_max.as_millis() as i64,
            backoff: self.backoff(),
        }
    }

    fn address(&self, ip: &str) -> Gate {
        Gate {
            key: format!("addr:{ip}"),
            cap: self.ip_per_hour,
            window_ms: WINDOW.as_millis() as i64,
            backoff: Vec::new(),
        }
    }

    fn account(&self, account: &str) -> Gate {
        Gate {
            key: format!("acct:{account}"),
            cap: self.account_per_hour,
            window_ms: WINDOW.as_millis() as i64,
            backoff: Vec::new(),
        }
    }
}

fn pair_key(account: &str, ip: &str) -> String {
    format!("pair:{account}|{ip}")
}

/// Which gate refused an attempt (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The pair's backoff.
    Pair,
    /// The address's hourly cap.
    Address,
    /// The account's hourly cap for untrusted addresses.
    Account,
}

impl Refusal {
    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pair => "pair",
            Self::Address => "address",
            Self::Account => "account",
        }
    }
}

/// An attempt let through: settle it with one of its methods.
#[derive(Debug)]
#[must_use = "settle the attempt"]
pub struct Attempt {
    pair: String,
    charged: Vec<String>,
    /// The hashing lane it may use.
    pub lane: Lane,
}

/// What the gates said.
#[derive(Debug)]
pub enum Admit {
    /// Go on and check the password.
    Go(Attempt),
    /// Refused without checking.
    Refused {
        /// The gate.
        by: Refusal,
        /// Seconds to wait (at least 1).
        retry_after_s: i64,
    },
}

/// Charges an attempt at `account` from `ip` to its gates, in order, and
/// undoes the charges already made when one refuses.
pub async fn admit(
    repo: &Repo,
    limits: &LoginLimits,
    account: &str,
    ip: &str,
    credential: Credential,
) -> Result<Admit, sqlx::Error> {
    let pair = limits.pair(account, ip);
    let trusted = repo.trusted(&pair.key).await?;
    let mut gates = vec![
        (pair, Refusal::Pair),
        (limits.address(ip), Refusal::Address),
    ];
    if credential == Credential::Password && !trusted {
        gates.push((limits.account(account), Refusal::Account));
    }
    let mut charged = Vec::with_capacity(gates.len());
    for (gate, by) in gates {
        match repo.charge(&gate).await? {
            Admission::Charged => charged.push(gate.key),
            Admission::Refused { retry_after_ms } => {
                for key in &charged {
                    repo.refund(key).await?;
                }
                return Ok(Admit::Refused {
                    by,
                    retry_after_s: (retry_after_ms + 999) / 1000,
                });
            }
        }
    }
    Ok(Admit::Go(Attempt {
        pair: pair_key(account, ip),
        charged,
        lane: if trusted { Lane::Trusted } else { Lane::Other },
    }))
}

impl Attempt {
    /// The password was right: refund, reset the pair, trust the address.
    pub async fn succeeded(self, repo: &Repo) -> Result<(), sqlx::Error> {
        for key in self.charged.iter().filter(|k| **k != self.pair) {
            repo.refund(key).await?;
        }
        let until = dialstack_common::now_ms() + TRUST.as_millis() as i64;
        repo.trust(&self.pair, until).await
    }

    /// The password was wrong: the charges stay.
    pub fn failed(self) {}

    /// The password was never checked: refund everything.
    pub async fn unchecked(self, repo: &Repo) -> Result<(), sqlx::Error> {
        for key in &self.charged {
            repo.refund(key).await?;
        }
        Ok(())
    }
}

/// Deletes expired counters every ten minutes until shutdown, so that the
/// table holds only live windows and trusted addresses.
pub async fn run_pruning(
    repo: Repo,
    limits: LoginLimits,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let horizon = (WINDOW + limits.backoff_max).as_millis() as i64;
    loop {
        match repo
            .prune_throttle(dialstack_common::now_ms() - horizon)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "login throttle counters pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune login throttle counters"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_free_attempts_to_the_maximum() {
        let limits = LoginLimits {
            free_attempts: 5,
            backoff_max: Duration::from_secs(10),
            ..LoginLimits::default()
        };
        assert_eq!(
            limits.backoff(),
            vec![(5, 1000), (6, 2000), (7, 4000), (8, 8000), (9, 10_000)]
        );
        let limits = LoginLimits {
            free_attempts: 1,
            backoff_max: Duration::from_secs(1),
            ..LoginLimits::default()
        };
        assert_eq!(limits.backoff(), vec![(1, 1000)]);
    }
}
