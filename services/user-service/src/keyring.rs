//! The signing keys in use: which one signs now and which are published.
//!
//! Rotation: a new key is published in the JWKS at once but signs only after
//! the publish delay (so every verifier's JWKS cache has seen it); the keys it
//! replaces stay published until the new one has signed for a token lifetime
//! plus the verification leeway, then they are retired.
//!
//! Seeds not sealed under the current key-encryption key are sealed again
//! at load and on every tick of [`run_keyring`] (see [`crate::kek`]): a
//! replica still on the old key during a rolling KEK rotation may write one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use dialstack_common::auth::{Jwks, SigningKey, StaticKeys, LEEWAY_SECS};
use tokio_util::sync::CancellationToken;

use crate::db::{KeyError, Repo};

/// The current signer and published keys, reloaded from the database.
pub struct Keyring {
    repo: Repo,
    /// The signing key and the published set.
    current: RwLock<(SigningKey, Jwks)>,
    /// What this service verifies its own tokens against.
    verify: Arc<StaticKeys>,
}

impl Keyring {
    /// Seals again the seeds not sealed under the current key-encryption
    /// key, then loads the keys (creating the first one if there is none).
    /// Fails on a seed that no configured key opens.
    pub async fn load(repo: Repo) -> Result<Arc<Self>, KeyError> {
        reseal(&repo).await?;
        let signer = repo.current_signing_key().await?;
        let jwks = repo.jwks().await?;
        let verify = Arc::new(StaticKeys::from_jwks(&jwks));
        Ok(Arc::new(Self {
            repo,
            current: RwLock::new((signer, jwks)),
            verify,
        }))
    }

    /// The key that signs now.
    pub fn signer(&self) -> SigningKey {
        self.current
            .read()
            .map(|c| c.0.clone())
            .unwrap_or_else(|p| p.into_inner().0.clone())
    }

    /// The published keys.
    pub fn jwks(&self) -> Jwks {
        self.current
            .read()
            .map(|c| c.1.clone())
            .unwrap_or_else(|p| p.into_inner().1.clone())
    }

    /// The verification keys of this service.
    pub fn verify_keys(&self) -> Arc<StaticKeys> {
        self.verify.clone()
    }

    /// Re-reads the signer and the published set.
    pub async fn reload(&self) -> Result<(), KeyError> {
        let signer = self.repo.current_signing_key().await?;
        let jwks = self.repo.jwks().await?;
        self.verify.replace(&jwks);
        if let Ok(mut c) = self.current.write() {
            *c = (signer, jwks);
        }
        Ok(())
    }

    /// Publishes a new key that signs after `publish_delay`; returns its kid
    /// and activation time (ms since epoch).
    pub async fn rotate(&self, publish_delay: Duration) -> Result<(String, i64), KeyError> {
        let at = dialstack_common::now_ms() + publish_delay.as_millis() as i64;
        let key = self.repo.add_signing_key(at).await?;
        self.reload().await?;
        Ok((key.kid, at))
    }
}

/// Seals again the seeds not sealed under the current key-encryption key.
async fn reseal(repo: &Repo) -> Result<(), KeyError> {
    for kid in repo.reseal_signing_keys().await? {
        tracing::info!(
            %kid,
            kek_id = repo.kek_id().unwrap_or_default(),
            "signing key sealed under the current key-encryption key"
        );
    }
    Ok(())
}

/// Activates and retires keys on time, until shutdown.
pub async fn run_keyring(keyring: Arc<Keyring>, token_ttl: Duration, shutdown: CancellationToken) {
    let retire_after = token_ttl.as_millis() as i64 + LEEWAY_SECS * 1000;
    loop {
        match keyring.repo.retire_superseded(retire_after).await {
            Ok(retired) => {
                for kid in retired {
                    tracing::info!(%kid, "signing key retired");
                    let _ = keyring.repo.audit("key_retired", &kid, "", "").await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot retire signing keys"),
        }
        if let Err(e) = reseal(&keyring.repo).await {
            tracing::warn!(
                error = format!("{:#}", anyhow::Error::new(e)),
                "cannot seal signing keys again"
            );
        }
        if let Err(e) = keyring.reload().await {
            tracing::warn!(
                error = format!("{:#}", anyhow::Error::new(e)),
                "cannot reload signing keys"
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
