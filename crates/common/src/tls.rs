//! TLS settings shared by the outbound connections: one extra CA bundle,
//! `DIALSTACK_CA_FILE` (PEM, one or more certificates), and the HTTP client
//! builder every service starts from so that `https://` works the same in
//! all five binaries.
//!
//! Every client is rustls with the ring provider and the system's CA
//! certificates, except Kafka (librdkafka brings OpenSSL). Who uses the
//! bundle:
//! - HTTP clients built with [`TlsConfig::http_client`] (JWKS, webhooks,
//!   WeCom, calls between services): the system's CAs plus the bundle;
//! - `amqps://` ([`crate::bus`]): the system's CAs plus the bundle, or plus
//!   the URL's `ssl_ca=` file;
//! - `kafka://` with `security_protocol=ssl|sasl_ssl`: the URL's `ssl_ca=`
//!   file, else the bundle, else the system's CAs; librdkafka takes one CA
//!   source, so a file given *replaces* the system's CAs;
//! - `mysql://` ([`crate::db`]): the URL's `ssl-ca=`, else the bundle, added
//!   to the system's CAs when `ssl-mode` is `verify_ca` or `verify_identity`.
//!
//! The bundle is read once at start: a new CA takes a restart.

use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Env};

/// The variable naming the extra CA bundle.
pub const CA_FILE_VAR: &str = "DIALSTACK_CA_FILE";

/// A CA bundle that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read CA file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no PEM certificate, or a malformed one.
    #[error("CA file {path} holds no usable PEM certificate{detail}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What the parser said, if anything (starts with `: `).
        detail: String,
    },
}

/// The extra CAs trusted by outbound TLS connections, besides the system's.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// The bundle's path (`DIALSTACK_CA_FILE`), if one is set.
    ca_file: Option<PathBuf>,
    /// Its certificates, parsed at start.
    ca_certs: Vec<reqwest::Certificate>,
}

impl TlsConfig {
    /// No extra CA: the system's only.
    pub fn system() -> Self {
        Self::default()
    }

    /// Reads `DIALSTACK_CA_FILE` when set; an unreadable or empty bundle is
    /// an error naming the variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        match env.get(CA_FILE_VAR) {
            None => Ok(Self::system()),
            Some(path) => Self::with_ca_file(path).map_err(|e| ConfigError::new(CA_FILE_VAR, e)),
        }
    }

    /// Trusts the certificates of the PEM file at `path` besides the system's.
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref().to_owned();
        let pem = read_ca_file(&path)?;
        let ca_certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
            TlsError::NoCertificate {
                path: path.clone(),
                detail: format!(": {e}"),
            }
        })?;
        Ok(Self {
            ca_file: Some(path),
            ca_certs,
        })
    }

    /// The bundle's path, if one is set.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// A `reqwest` client builder that trusts the system's CAs and the
    /// bundle. Every outbound HTTP client of the services starts here.
    pub fn http_client(&self) -> reqwest::ClientBuilder {
        self.ca_certs
            .iter()
            .cloned()
            .fold(reqwest::Client::builder(), |b, cert| {
                b.add_root_certificate(cert)
            })
    }
}

/// The PEM text of a CA file, checked to hold at least one certificate.
pub fn read_ca_file(path: &Path) -> Result<String, TlsError> {
    let pem = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
            detail: String::new(),
        });
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_means_the_system_cas_only() {
        let tls = TlsConfig::from_env(&Env::default()).unwrap();
        assert!(tls.ca_file().is_none());
        assert!(tls.http_client().build().is_ok());
    }

    #[test]
    fn a_missing_or_empty_bundle_names_the_variable() {
        let env = Env::from_pairs([(CA_FILE_VAR, "/nonexistent/ca.pem")]);
        let err = TlsConfig::from_env(&env).unwrap_err();
        assert_eq!(err.var, CA_FILE_VAR);
        assert!(err.reason.contains("/nonexistent/ca.pem"), "{err}");

        let dir = std::env::temp_dir().join(format!("dialstack-tls-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let env = Env::from_pairs([(CA_FILE_VAR, empty.to_str().unwrap())]);
        let err = TlsConfig::from_env(&env).unwrap_err();
        assert!(err.reason.contains("no usable PEM certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
