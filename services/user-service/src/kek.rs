//! The key-encryption key (KEK): signing seeds sealed at rest.
//!
//! `DIALSTACK_KEY_ENCRYPTION_KEY` (32 random bytes, base64) seals each
//! Ed25519 seed before it is written to `signing_keys.seed`:
//! XChaCha20-Poly1305 under a random nonce, with the signing key's `kid` as
//! associated data so that a sealed seed copied onto another row does not
//! open. The stored value is `v1:<kek id>:<nonce>:<ciphertext>` (both
//! base64), where the KEK id is a fingerprint of the key: each row says which
//! key opens it.
//!
//! Rotation: the new key goes in `DIALSTACK_KEY_ENCRYPTION_KEY` and the old
//! one in `DIALSTACK_KEY_ENCRYPTION_KEY_PREVIOUS`, which still opens. At start
//! (and then every second, see [`crate::keyring`]) every seed not sealed
//! under the current key, under the previous one or left in plaintext from
//! before sealing existed, is sealed again under the current one. A seed
//! that no configured key opens stops the start with an [`OpenError`] that
//! names the variables: generating new keys over it would void every token.
//!
//! Without a KEK (development only; refused when
//! `DIALSTACK_ENVIRONMENT=production`) seeds are stored in plaintext base64.
//!
//! The KEK keeps the seeds from whoever reads the database or its backups.
//! It does not protect against whoever can write to it: they could as well
//! add an admin.

use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use dialstack_common::config::{ConfigError, Env};
use sha2::Digest as _;

/// The variable that holds the current key-encryption key.
pub const KEK_VAR: &str = "DIALSTACK_KEY_ENCRYPTION_KEY";
/// The variable that holds the previous key-encryption key (rotation).
pub const PREVIOUS_VAR: &str = "DIALSTACK_KEY_ENCRYPTION_KEY_PREVIOUS";

/// The format tag of a sealed seed.
const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// One key-encryption key and its id.
#[derive(Clone)]
pub struct Kek {
    id: String,
    key: Key,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Kek {
    /// A key from its 32 bytes.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let digest = sha2::Sha256::new()
            .chain_update(b"dialstack key-encryption key id\0")
            .chain_update(key)
            .finalize();
        Self {
            id: digest[..8].iter().map(|b| format!("{b:02x}")).collect(),
            key: key.into(),
        }
    }

    /// Parses the base64 value of `var` (`openssl rand -base64 32`).
    pub fn parse(var: &str, text: &str) -> Result<Self, ConfigError> {
        let bytes = b64().decode(text.trim()).map_err(|_| {
            ConfigError::new(
                var,
                "is not base64: generate one with `openssl rand -base64 32`",
            )
        })?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            ConfigError::new(
                var,
                format!(
                    "must be 32 bytes in base64, not {}: generate one with `openssl rand -base64 32`",
                    bytes.len()
                ),
            )
        })?;
        // All zeros ("AAAA...=") and the like come from examples, not from a
        // random source.
        if key.iter().all(|b| *b == key[0]) {
            return Err(ConfigError::new(
                var,
                "is one byte repeated, not a random key: generate one with `openssl rand -base64 32`",
            ));
        }
        Ok(Self::from_bytes(key))
    }

    /// The key's fingerprint, stored with every seed it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn aad(&self, kid: &str) -> String {
        format!("{VERSION}:{}:{kid}", self.id)
    }

    fn seal(&self, kid: &str, seed: &[u8; 32]) -> String {
        use argon2::password_hash::rand_core::{OsRng, RngCore};
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let aad = self.aad(kid);
        let sealed = XChaCha20Poly1305::new(&self.key)
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: seed,
                    aad: aad.as_bytes(),
                },
            )
            // Encryption fails only for messages of 256 GiB and more.
            .unwrap_or_default();
        format!(
            "{VERSION}:{}:{}:{}",
            self.id,
            b64().encode(nonce),
            b64().encode(sealed)
        )
    }

    fn open(&self, kid: &str, nonce: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let aad = self.aad(kid);
        XChaCha20Poly1305::new(&self.key)
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .ok()
    }
}

/// A stored seed that cannot be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// Sealed under a key that is not configured.
    #[error(
        "is sealed with key-encryption key {kek_id}, but {configured}: set the key it was \
         sealed with as {KEK_VAR} or {PREVIOUS_VAR} (see docs/OPERATIONS.md, \"Key-encryption key\")"
    )]
    UnknownKek {
        /// The id stored with the seed.
        kek_id: String,
        /// The ids that are configured, and in which variable.
        configured: String,
    },
    /// Sealed under a configured key, but the row does not authenticate:
    /// altered, or copied from another row.
    #[error(
        "does not open under key-encryption key {kek_id} ({var}): the stored value was \
         altered or belongs to another signing key"
    )]
    Tampered {
        /// The id stored with the seed.
        kek_id: String,
        /// The variable holding that key.
        var: &'static str,
    },
    /// Neither a sealed seed nor a plaintext one.
    #[error("is not a stored seed: {0}")]
    Malformed(&'static str),
}

/// How seeds are stored: sealed under the current KEK (plaintext when
/// there is none, development only), opened under it or the previous one.
#[derive(Clone, Debug, Default)]
pub struct SeedSealer {
    /// `DIALSTACK_KEY_ENCRYPTION_KEY`: seals, and opens.
    current: Option<Kek>,
    /// `DIALSTACK_KEY_ENCRYPTION_KEY_PREVIOUS`: opens only.
    previous: Option<Kek>,
}

impl SeedSealer {
    /// Seeds stored in plaintext (development).
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Seals under `current`; `previous` still opens.
    pub fn new(current: Kek, previous: Option<Kek>) -> Self {
        let previous = previous.filter(|p| p.id != current.id);
        Self {
            current: Some(current),
            previous,
        }
    }

    /// Reads [`KEK_VAR`] and [`PREVIOUS_VAR`]. The KEK is required when
    /// `DIALSTACK_ENVIRONMENT=production`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let production = env
            .get("DIALSTACK_ENVIRONMENT")
            .is_some_and(|e| e.eq_ignore_ascii_case("production"));
        let previous = env
            .get(PREVIOUS_VAR)
            .map(|v| Kek::parse(PREVIOUS_VAR, v))
            .transpose()?;
        match env.get(KEK_VAR) {
            Some(v) => Ok(Self::new(Kek::parse(KEK_VAR, v)?, previous)),
            None if previous.is_some() => Err(ConfigError::new(
                PREVIOUS_VAR,
                format!("is set but {KEK_VAR} is not: the previous key only opens, the current one seals"),
            )),
            None if production => Err(ConfigError::new(
                KEK_VAR,
                "is required when DIALSTACK_ENVIRONMENT=production (it encrypts the token \
                 signing keys at rest): generate one with `openssl rand -base64 32`",
            )),
            None => Ok(Self::plaintext()),
        }
    }

    /// The id of the key that seals, if any.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(Kek::id)
    }

    /// The value to store for signing key `kid`'s seed.
    pub fn seal(&self, kid: &str, seed: &[u8; 32]) -> String {
        match &self.current {
            Some(kek) => kek.seal(kid, seed),
            None => b64().encode(seed),
        }
    }

    /// The prefix of every value sealed under the current key (`None`:
    /// values are stored in plaintext).
    pub fn current_prefix(&self) -> Option<String> {
        self.current_id().map(|id| format!("{VERSION}:{id}:"))
    }

    /// Whether `stored` is as [`SeedSealer::seal`] writes it now (under the
    /// current key, or in plaintext when there is none).
    pub fn is_current(&self, stored: &str) -> bool {
        match self.current_prefix() {
            Some(prefix) => stored.starts_with(&prefix),
            None => !stored.contains(':'),
        }
    }

    /// The seed of signing key `kid` from its stored value: sealed under
    /// the current or the previous key, or plaintext (rows written before
    /// seeds were sealed, or without a KEK).
    pub fn open(&self, kid: &str, stored: &str) -> Result<[u8; 32], OpenError> {
        let Some((version, rest)) = stored.split_once(':') else {
            let seed = b64()
                .decode(stored)
                .map_err(|_| OpenError::Malformed("neither sealed nor base64"))?;
            return seed
                .try_into()
                .map_err(|_| OpenError::Malformed("a plaintext seed of the wrong length"));
        };
        if version != VERSION {
            return Err(OpenError::Malformed("unknown format version"));
        }
        let mut parts = rest.split(':');
        let (Some(kek_id), Some(nonce), Some(sealed), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OpenError::Malformed("not v1:<kek id>:<nonce>:<ciphertext>"));
        };
        let (kek, var) = match (&self.current, &self.previous) {
            (Some(k), _) if k.id == kek_id => (k, KEK_VAR),
            (_, Some(k)) if k.id == kek_id => (k, PREVIOUS_VAR),
            _ => {
                return Err(OpenError::UnknownKek {
                    kek_id: kek_id.to_owned(),
                    configured: self.configured(),
                })
            }
        };
        let nonce = b64()
            .decode(nonce)
            .ok()
            .filter(|n| n.len() == NONCE_LEN)
            .ok_or(OpenError::Malformed("bad nonce"))?;
        let sealed = b64()
            .decode(sealed)
            .map_err(|_| OpenError::Malformed("bad ciphertext"))?;
        let tampered = || OpenError::Tampered {
            kek_id: kek_id.to_owned(),
            var,
        };
        kek.open(kid, &nonce, &sealed)
            .ok_or_else(tampered)?
            .try_into()
            .map_err(|_| tampered())
    }

    /// Which keys are configured, for error messages.
    fn configured(&self) -> String {
        match (&self.current, &self.previous) {
            (None, _) => format!("{KEK_VAR} is not set"),
            (Some(c), None) => format!("{KEK_VAR} is {} and {PREVIOUS_VAR} is not set", c.id),
            (Some(c), Some(p)) => format!("{KEK_VAR} is {} and {PREVIOUS_VAR} is {}", c.id, p.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: [u8; 32] = [7; 32];
    const KID: &str = "0190a1b2c3d4e5f60718293a4b5c6d7e";

    fn kek(n: u8) -> Kek {
        let mut key = [n; 32];
        key[0] = n.wrapping_add(1);
        Kek::from_bytes(key)
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn a_sealed_seed_opens_and_hides_the_seed() {
        let s = SeedSealer::new(kek(1), None);
        let stored = s.seal(KID, &SEED);
        assert!(
            stored.starts_with(&format!("v1:{}:", kek(1).id())),
            "{stored}"
        );
        assert!(!stored.contains(&b64().encode(SEED)), "{stored}");
        assert!(s.is_current(&stored));
        assert_eq!(s.open(KID, &stored), Ok(SEED));
        // A fresh nonce each time.
        assert_ne!(s.seal(KID, &SEED), stored);
    }

    #[test]
    fn a_seed_moved_to_another_kid_does_not_open() {
        let s = SeedSealer::new(kek(1), None);
        let stored = s.seal(KID, &SEED);
        let e = s.open("another-kid", &stored).unwrap_err();
        assert!(matches!(e, OpenError::Tampered { var: KEK_VAR, .. }), "{e}");
    }

    #[test]
    fn an_altered_ciphertext_or_key_id_does_not_open() {
        let s = SeedSealer::new(kek(1), None);
        let stored = s.seal(KID, &SEED);
        let (head, ct) = stored.rsplit_once(':').unwrap();
        let mut bytes = b64().decode(ct).unwrap();
        bytes[0] ^= 1;
        let altered = format!("{head}:{}", b64().encode(&bytes));
        assert!(matches!(
            s.open(KID, &altered),
            Err(OpenError::Tampered { .. })
        ));
        // The id is in the associated data too: relabelling the row as
        // sealed under another configured key fails.
        let two = SeedSealer::new(kek(2), Some(kek(1)));
        let relabelled = stored.replacen(kek(1).id(), kek(2).id(), 1);
        assert!(matches!(
            two.open(KID, &relabelled),
            Err(OpenError::Tampered { var: KEK_VAR, .. })
        ));
    }

    #[test]
    fn a_wrong_key_is_an_error_naming_the_variables() {
        let stored = SeedSealer::new(kek(1), None).seal(KID, &SEED);
        let other = SeedSealer::new(kek(2), None);
        let e = other.open(KID, &stored).unwrap_err();
        assert!(matches!(e, OpenError::UnknownKek { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(kek(1).id()), "{msg}");
        assert!(msg.contains(KEK_VAR) && msg.contains(PREVIOUS_VAR), "{msg}");
        let e = SeedSealer::plaintext().open(KID, &stored).unwrap_err();
        assert!(
            e.to_string()
                .contains("DIALSTACK_KEY_ENCRYPTION_KEY is not set"),
            "{e}"
        );
    }

    #[test]
    fn rotation_opens_under_the_previous_key_and_seals_under_the_new_one() {
        let old = SeedSealer::new(kek(1), None).seal(KID, &SEED);
        let rotated = SeedSealer::new(kek(2), Some(kek(1)));
        assert!(!rotated.is_current(&old));
        assert_eq!(rotated.open(KID, &old), Ok(SEED));
        let new = rotated.seal(KID, &rotated.open(KID, &old).unwrap());
        assert!(rotated.is_current(&new));
        // Once the previous key is dropped, the new value still opens.
        assert_eq!(SeedSealer::new(kek(2), None).open(KID, &new), Ok(SEED));
    }

    #[test]
    fn plaintext_seeds_open_and_are_stale_under_a_kek() {
        let plain = SeedSealer::plaintext().seal(KID, &SEED);
        assert_eq!(plain, b64().encode(SEED));
        assert!(SeedSealer::plaintext().is_current(&plain));
        let s = SeedSealer::new(kek(1), None);
        assert!(!s.is_current(&plain));
        assert_eq!(s.open(KID, &plain), Ok(SEED));
        for bad in ["", "not base64!", "AAAA", "v2:x:y:z", "v1:only:three"] {
            assert!(
                matches!(s.open(KID, bad), Err(OpenError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_kek_is_32_random_bytes_in_base64() {
        let good = b64().encode((0u8..32).collect::<Vec<_>>());
        let a = Kek::parse(KEK_VAR, &good).unwrap();
        assert_eq!(a.id().len(), 16);
        assert_eq!(
            a.id(),
            Kek::parse(KEK_VAR, &format!("{good}\n")).unwrap().id()
        );
        for bad in [
            "not base64!".to_owned(),
            b64().encode([1u8; 16]),
            b64().encode([0u8; 32]),
        ] {
            let e = Kek::parse(KEK_VAR, &bad).unwrap_err();
            assert_eq!(e.var, KEK_VAR, "{bad}");
            assert!(e.to_string().contains("openssl rand -base64 32"), "{e}");
        }
        assert!(!format!("{a:?}").contains(&good));
    }

    #[test]
    fn production_requires_a_kek_and_development_allows_plaintext() {
        let e = SeedSealer::from_env(&env(&[("DIALSTACK_ENVIRONMENT", "production")])).unwrap_err();
        assert_eq!(e.var, KEK_VAR);
        assert!(e.to_string().contains("production"), "{e}");
        assert!(SeedSealer::from_env(&env(&[]))
            .unwrap()
            .current_id()
            .is_none());
        let key = b64().encode((0u8..32).collect::<Vec<_>>());
        let s = SeedSealer::from_env(&env(&[
            ("DIALSTACK_ENVIRONMENT", "production"),
            (KEK_VAR, &key),
        ]))
        .unwrap();
        assert_eq!(
            s.current_id(),
            Some(Kek::parse(KEK_VAR, &key).unwrap().id())
        );
        let e = SeedSealer::from_env(&env(&[(PREVIOUS_VAR, &key)])).unwrap_err();
        assert_eq!(e.var, PREVIOUS_VAR);
        let e =
            SeedSealer::from_env(&env(&[(KEK_VAR, &key), (PREVIOUS_VAR, "short")])).unwrap_err();
        assert_eq!(e.var, PREVIOUS_VAR);
    }
}
