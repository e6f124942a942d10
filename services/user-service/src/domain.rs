//! Usernames and the password policy. Hashing is argon2id with the `argon2`
//! crate's defaults (19 MiB, 2 passes, 1 lane), which meet OWASP's minimum.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;

/// A few of the most common passwords, refused whatever their length.
const COMMON: &[&str] = &[
    "123456789012",
    "password1234",
    "qwertyuiop12",
    "111111111111",
    "passwordpassword",
    "iloveyou1234",
    "administrator",
    "letmein12345",
    "welcome12345",
    "changeme1234",
];

/// Checks a new password against the policy.
pub fn check_password(p: &str) -> Result<(), String> {
    if p.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!("must be at least {MIN_PASSWORD_LEN} characters"));
    }
    if COMMON.contains(&p.to_lowercase().as_str()) {
        return Err("is one of the most common passwords".into());
    }
    Ok(())
}

/// Checks a username: 3-64 of `[a-z0-9._-]`.
pub fn check_username(u: &str) -> Result<(), String> {
    let ok_len = (3..=64).contains(&u.len());
    let ok_chars = u
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err("must be 3-64 characters of a-z, 0-9, '.', '_', '-'".into())
    }
}

/// Hashes a password off the async runtime.
pub async fn hash_password(p: &str) -> anyhow::Result<String> {
    let p = p.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(p.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
    })
    .await?
}

/// A hash of a random password, verified against when the user is unknown so
/// that timing does not reveal which usernames exist.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(b"no such user, no such password", &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
});

/// Verifies `p` against `hash` (or against a dummy when `hash` is `None`) off
/// the async runtime.
pub async fn verify_password(p: &str, hash: Option<String>) -> bool {
    let p = p.to_owned();
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        let ok = PasswordHash::new(&hash)
            .map(|h| Argon2::default().verify_password(p.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        ok && known
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_short_and_common_passwords() {
        assert!(check_password("short").is_err());
        assert!(check_password("Password1234").is_err());
        assert!(check_password("correct horse battery").is_ok());
        assert!(check_username("ab").is_err());
        assert!(check_username("Admin").is_err());
        assert!(check_username("agent.007").is_ok());
    }

    #[tokio::test]
    async fn hashes_verify_only_the_right_password() {
        let h = hash_password("correct horse battery").await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", Some(h.clone())).await);
        assert!(!verify_password("wrong horse battery", Some(h)).await);
        assert!(!verify_password("anything at all", None).await);
    }
}

/// Where an agent is, as the dialer sees it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Not logged in, or gone (no heartbeat).
    Offline,
    /// Waiting for a call.
    Available,
    /// A call is being routed to them.
    Reserved,
    /// Talking.
    OnCall,
    /// After-call work.
    WrapUp,
    /// Away, with a pause code.
    Paused,
}

impl AgentState {
    /// Every state, in a stable order.
    pub const ALL: [AgentState; 6] = [
        Self::Offline,
        Self::Available,
        Self::Reserved,
        Self::OnCall,
        Self::WrapUp,
        Self::Paused,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Available => "available",
            Self::Reserved => "reserved",
            Self::OnCall => "on_call",
            Self::WrapUp => "wrap_up",
            Self::Paused => "paused",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether an agent may move from `self` to `to` on request. Going
    /// offline for lack of heartbeats is the system's doing and is always
    /// allowed (see [`AgentState::can_time_out`]).
    pub fn can_become(self, to: AgentState) -> bool {
        use AgentState::*;
        matches!(
            (self, to),
            (Offline, Available)
                | (Available, Reserved | Paused | Offline)
                | (Reserved, OnCall | Available)
                | (OnCall, WrapUp)
                | (WrapUp, Available | Paused | Offline)
                | (Paused, Available | Offline)
        )
    }

    /// Whether a missing heartbeat takes the agent offline from here.
    pub fn can_time_out(self) -> bool {
        self != AgentState::Offline
    }
}

/// Whether an agent in `wrap_up` since `since_ms` is due to leave it at
/// `now_ms`: the shortest timeout among its teams that set one applies; with
/// none, only the agent ends its wrap-up.
pub fn wrap_up_due(
    teams: &[String],
    timeouts_secs: &std::collections::HashMap<String, i64>,
    since_ms: i64,
    now_ms: i64,
) -> bool {
    teams
        .iter()
        .filter_map(|t| timeouts_secs.get(t))
        .min()
        .is_some_and(|secs| now_ms - since_ms >= secs * 1000)
}

#[cfg(test)]
mod agent_tests {
    use super::AgentState::{self, *};

    #[test]
    fn the_transition_table() {
        let allowed = [
            (Offline, Available),
            (Available, Reserved),
            (Available, Paused),
            (Available, Offline),
            (Reserved, OnCall),
            (Reserved, Available),
            (OnCall, WrapUp),
            (WrapUp, Available),
            (WrapUp, Paused),
            (WrapUp, Offline),
            (Paused, Available),
            (Paused, Offline),
        ];
        for from in AgentState::ALL {
            for to in AgentState::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
            assert_eq!(AgentState::parse(from.as_str()), Some(from));
        }
        assert!(!Offline.can_time_out() && OnCall.can_time_out());
    }

    #[test]
    fn wrap_up_ends_at_the_shortest_team_timeout() {
        use super::wrap_up_due;
        let limits: std::collections::HashMap<String, i64> =
            [("sales".to_owned(), 30), ("vip".to_owned(), 10)].into();
        let teams = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!wrap_up_due(&teams(&["sales"]), &limits, 0, 29_999));
        assert!(wrap_up_due(&teams(&["sales"]), &limits, 0, 30_000));
        assert!(wrap_up_due(&teams(&["sales", "vip"]), &limits, 0, 10_000));
        assert!(!wrap_up_due(&teams(&["support"]), &limits, 0, 1_000_000));
        assert!(!wrap_up_due(&[], &limits, 0, 1_000_000));
    }
}
