//! The rules of user-service, free of HTTP and SQL.
//!
//! # Layout
//! - this module: usernames and the password policy. Hashing is argon2id with
//!   the `argon2` crate's defaults (19 MiB, 2 passes, 1 lane), which meet
//!   OWASP's minimum.
//! - [`agent`]: agent states, who may move an agent between them, what a
//!   call needs of the agent it reserves, and the wrap-up timeout.

pub mod agent;

pub use agent::{judge, wrap_up_due, AgentNeeds, AgentState, Requester, Verdict};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
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

/// Words of placeholder secrets from examples and templates (the compose
/// and Kubernetes examples once shipped `dev-admin-change-me`): a secret
/// containing one was never chosen, so the service refuses it at start.
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "placeholder",
    "your-password",
];

/// Checks a new password against the policy.
pub fn check_password(p: &str) -> Result<(), String> {
    if p.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!("must be at least {MIN_PASSWORD_LEN} characters"));
    }
    let lower = p.to_lowercase();
    if PLACEHOLDERS.iter().any(|w| lower.contains(w)) {
        return Err("is a placeholder from an example; set a secret of your own".into());
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

/// Working memory for argon2id (19 MiB with the default parameters), kept by
/// a hashing thread across hashes. Allocating and freeing it per hash makes
/// glibc keep up to about ten freed copies per thread (its mmap threshold
/// rises after the first free), so one reused buffer per thread is what
/// bounds the memory of hashing.
#[derive(Default)]
pub struct Scratch(Vec<argon2::Block>);

impl Scratch {
    fn blocks(&mut self, n: usize) -> &mut [argon2::Block] {
        if self.0.len() < n {
            self.0.resize(n, argon2::Block::default());
        }
        &mut self.0[..n]
    }
}

/// Hashes a password on this thread with `scratch` as working memory (tens
/// of milliseconds: call it from the hashing pool or a blocking thread).
pub fn hash_password_with(scratch: &mut Scratch, p: &str) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| format!("hashing failed: {e}");
    let salt = SaltString::generate(&mut OsRng);
    let params = argon2::Params::default();
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(|e| fail(&e))?;
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    let argon = Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.clone(),
    );
    argon
        .hash_password_into_with_memory(
            p.as_bytes(),
            salt_bytes,
            &mut out,
            scratch.blocks(params.block_count()),
        )
        .map_err(|e| fail(&e))?;
    let hash = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: argon2::password_hash::ParamsString::try_from(&params).map_err(|e| fail(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(argon2::password_hash::Output::new(&out).map_err(|e| fail(&e))?),
    };
    Ok(hash.to_string())
}

/// [`hash_password_with`] with fresh working memory.
pub fn hash_password_now(p: &str) -> Result<String, String> {
    hash_password_with(&mut Scratch::default(), p)
}

/// Hashes a password off the async runtime (start-up; requests go through
/// [`crate::hashing::PasswordPool`]).
pub async fn hash_password(p: &str) -> anyhow::Result<String> {
    let p = p.to_owned();
    tokio::task::spawn_blocking(move || hash_password_now(&p).map_err(anyhow::Error::msg)).await?
}

/// A hash of a random password, verified against when the user is unknown so
/// that timing does not reveal which usernames exist.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    hash_password_now("no such user, no such password").unwrap_or_default()
});

/// Most working memory a stored hash may ask for (KiB): a hash row with
/// absurd parameters must not make a login allocate gigabytes.
const MAX_M_COST_KIB: u32 = 256 * 1024;

/// Verifies `p` against `hash` (or against a dummy when `hash` is `None`) on
/// this thread with `scratch` as working memory.
pub fn verify_password_with(scratch: &mut Scratch, p: &str, hash: Option<&str>) -> bool {
    let known = hash.is_some();
    let hash = hash.unwrap_or(DUMMY_HASH.as_str());
    let ok = (|| {
        let parsed = PasswordHash::new(hash).ok()?;
        let algorithm = argon2::Algorithm::try_from(parsed.algorithm).ok()?;
        let version = match parsed.version {
            Some(v) => argon2::Version::try_from(v).ok()?,
            None => argon2::Version::default(),
        };
        let params = argon2::Params::try_from(&parsed).ok()?;
        if params.m_cost() > MAX_M_COST_KIB {
            return None;
        }
        let expected = parsed.hash?;
        let mut salt_buf = [0u8; 64];
        let salt = parsed.salt?.decode_b64(&mut salt_buf).ok()?;
        let mut out = vec![0u8; expected.len()];
        let blocks = params.block_count();
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(p.as_bytes(), salt, &mut out, scratch.blocks(blocks))
            .ok()?;
        // `Output` compares in constant time.
        Some(argon2::password_hash::Output::new(&out).ok()? == expected)
    })()
    .unwrap_or(false);
    ok && known
}

/// [`verify_password_with`] with fresh working memory.
pub fn verify_password_now(p: &str, hash: Option<&str>) -> bool {
    verify_password_with(&mut Scratch::default(), p, hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn policy_refuses_short_and_common_passwords() {
        assert!(check_password("short").is_err());
        assert!(check_password("Password1234").is_err());
        assert!(check_password("correct horse battery").is_ok());
        for placeholder in [
            "dev-admin-change-me",
            "CHANGEME-please-123",
            "placeholder-secret",
        ] {
            let e = check_password(placeholder).unwrap_err();
            assert!(e.contains("placeholder"), "{placeholder}: {e}");
        }
        assert!(check_username("ab").is_err());
        assert!(check_username("Admin").is_err());
        assert!(check_username("agent.007").is_ok());
    }

    #[tokio::test]
    async fn hashes_verify_only_the_right_password() {
        let h = hash_password("correct horse battery").await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password_now("correct horse battery", Some(&h)));
        assert!(!verify_password_now("wrong horse battery", Some(&h)));
        assert!(!verify_password_now("anything at all", None));
    }

    #[test]
    fn reused_memory_agrees_with_the_standard_hasher() {
        let mut scratch = Scratch::default();
        let ours = hash_password_with(&mut scratch, "correct horse battery").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse battery", &parsed)
            .is_ok());
        let theirs = Argon2::default()
            .hash_password(b"correct horse battery", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify_password_with(
            &mut scratch,
            "correct horse battery",
            Some(&theirs)
        ));
        assert!(!verify_password_with(
            &mut scratch,
            "correct horse batterz",
            Some(&theirs)
        ));
        assert!(!verify_password_with(&mut scratch, "x", Some("not a hash")));
        // Parameters beyond the bound are refused without hashing.
        let greedy = theirs.replace("m=19456", "m=4194304");
        assert!(!verify_password_with(
            &mut scratch,
            "correct horse battery",
            Some(&greedy)
        ));
    }
}
