//! Configuration read from an environment that is *passed in*, so tests never
//! touch the process environment. An optional TOML file supplies values the
//! environment does not set; the environment wins.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// A missing or malformed configuration value. Its `Display` is the one line a
/// service prints before it exits non-zero.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var}: {reason}")]
pub struct ConfigError {
    /// The variable at fault.
    pub var: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// Builds an error naming `var`.
    pub fn new(var: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            var: var.into(),
            reason: reason.to_string(),
        }
    }
}

/// The variables a service reads, merged from the environment and a TOML file.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// An environment made of exactly these pairs.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The process environment, with `--config FILE` (if present in `args`)
    /// supplying defaults. Only `main` functions call this.
    pub fn from_process(args: &[String]) -> Result<Self, ConfigError> {
        let mut env = Self::from_pairs(std::env::vars());
        if let Some(pos) = args.iter().position(|a| a == "--config") {
            let path = args
                .get(pos + 1)
                .ok_or_else(|| ConfigError::new("--config", "expects a file path"))?;
            env.merge_toml_file(Path::new(path))?;
        }
        Ok(env)
    }

    /// Adds the keys of a flat TOML file (`DIALSTACK_HTTP_ADDR = "..."`) that the
    /// environment does not already set.
    pub fn merge_toml_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("--config", format!("{}: {e}", path.display())))?;
        self.merge_toml_str(&text)
            .map_err(|e| ConfigError::new("--config", format!("{}: {}", path.display(), e.reason)))
    }

    /// As [`Env::merge_toml_file`], from a string.
    pub fn merge_toml_str(&mut self, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::new("--config", e.message()))?;
        for (key, value) in table {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigError::new(
                        key,
                        format!("unsupported TOML value {other:?}"),
                    ))
                }
            };
            self.vars.entry(key).or_insert(value);
        }
        Ok(())
    }

    /// Sets a value (used by `dialstack up` to give each service its defaults).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(key.into(), value.into());
    }

    /// The value of `var` if set and not empty.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value of `var`, or an error naming it.
    pub fn required(&self, var: &str) -> Result<String, ConfigError> {
        self.get(var)
            .map(str::to_owned)
            .ok_or_else(|| ConfigError::new(var, "is required but not set"))
    }

    /// The value of `var`, or `default`.
    pub fn or(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_owned()
    }

    /// `var` parsed as `T`, or `default` when unset.
    pub fn parse_or<T>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| ConfigError::new(var, format!("cannot parse {raw:?}: {e}"))),
        }
    }

    /// `var` parsed as `T`, or an error naming it.
    pub fn parse_required<T>(&self, var: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let raw = self.required(var)?;
        raw.parse()
            .map_err(|e| ConfigError::new(var, format!("cannot parse {raw:?}: {e}")))
    }
}

/// The settings every service shares (DESIGN §5).
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `DIALSTACK_HTTP_ADDR`: where the HTTP API listens (port 0 picks a free one).
    pub http_addr: std::net::SocketAddr,
    /// `DIALSTACK_DATABASE_URL`: `sqlite://...` or `mysql://...`.
    pub database_url: String,
    /// `DIALSTACK_EVENTS_URL`: the events channel.
    pub events_url: String,
    /// `DIALSTACK_COMMANDS_URL`: the commands channel.
    pub commands_url: String,
    /// `DIALSTACK_JWKS_URL`: where the signing keys are published (unset only in user-service).
    pub jwks_url: Option<String>,
    /// `DIALSTACK_SHUTDOWN_GRACE_SECS`: how long in-flight work may take after SIGTERM.
    pub shutdown_grace: std::time::Duration,
    /// `DIALSTACK_CA_FILE`: extra CAs trusted by outbound TLS connections.
    pub tls: crate::tls::TlsConfig,
    /// The broker settings kept out of the channel URLs: the CA bundle and
    /// `DIALSTACK_KAFKA_SASL_USERNAME` / `DIALSTACK_KAFKA_SASL_PASSWORD`.
    pub bus: crate::bus::BusOptions,
}

impl CommonConfig {
    /// Reads the shared settings; `default_port` is the service's DESIGN §1 port.
    pub fn from_env(env: &Env, default_port: u16) -> Result<Self, ConfigError> {
        let http_addr = env.parse_or(
            "DIALSTACK_HTTP_ADDR",
            std::net::SocketAddr::from(([0, 0, 0, 0], default_port)),
        )?;
        let database_url = env.required("DIALSTACK_DATABASE_URL")?;
        check_scheme(
            "DIALSTACK_DATABASE_URL",
            &database_url,
            &["sqlite:", "mysql:"],
        )?;
        let events_url = env.required("DIALSTACK_EVENTS_URL")?;
        check_scheme("DIALSTACK_EVENTS_URL", &events_url, crate::bus::SCHEMES)?;
        let commands_url = env.required("DIALSTACK_COMMANDS_URL")?;
        check_scheme("DIALSTACK_COMMANDS_URL", &commands_url, crate::bus::SCHEMES)?;
        let jwks_url = env.get("DIALSTACK_JWKS_URL").map(str::to_owned);
        if let Some(url) = &jwks_url {
            check_scheme("DIALSTACK_JWKS_URL", url, &["http://", "https://"])?;
        }
        let grace: u64 = env.parse_or("DIALSTACK_SHUTDOWN_GRACE_SECS", 20)?;
        let tls = crate::tls::TlsConfig::from_env(env)?;
        let bus = crate::bus::BusOptions::from_env(env, &tls);
        Ok(Self {
            http_addr,
            database_url,
            events_url,
            commands_url,
            jwks_url,
            shutdown_grace: std::time::Duration::from_secs(grace),
            tls,
            bus,
        })
    }
}

impl CommonConfig {
    /// Fails naming `DIALSTACK_JWKS_URL` when it is not set (every service but
    /// user-service verifies tokens).
    pub fn require_jwks(self) -> Result<Self, ConfigError> {
        if self.jwks_url.is_none() {
            return Err(ConfigError::new(
                "DIALSTACK_JWKS_URL",
                "is required but not set",
            ));
        }
        Ok(self)
    }
}

/// Checks that `url` starts with one of `schemes`.
pub fn check_scheme(var: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    if schemes.iter().any(|s| url.starts_with(s)) {
        Ok(())
    } else {
        Err(ConfigError::new(
            var,
            format!("{url:?} must start with one of {}", schemes.join(", ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_required_value_names_the_variable() {
        let env = Env::from_pairs([("DIALSTACK_EVENTS_URL", "memory://")]);
        let err = CommonConfig::from_env(&env, 8080).unwrap_err();
        assert_eq!(err.var, "DIALSTACK_DATABASE_URL");
        assert!(err.to_string().contains("DIALSTACK_DATABASE_URL"));
    }

    #[test]
    fn bad_value_is_refused_with_its_name() {
        let env = Env::from_pairs([
            ("DIALSTACK_HTTP_ADDR", "not-an-address"),
            ("DIALSTACK_DATABASE_URL", "sqlite::memory:"),
        ]);
        let err = CommonConfig::from_env(&env, 8080).unwrap_err();
        assert_eq!(err.var, "DIALSTACK_HTTP_ADDR");
        let env = Env::from_pairs([
            ("DIALSTACK_DATABASE_URL", "postgres://x"),
            ("DIALSTACK_EVENTS_URL", "memory://"),
            ("DIALSTACK_COMMANDS_URL", "memory://"),
        ]);
        assert_eq!(
            CommonConfig::from_env(&env, 8080).unwrap_err().var,
            "DIALSTACK_DATABASE_URL"
        );
    }

    #[test]
    fn environment_wins_over_toml() {
        let mut env = Env::from_pairs([("DIALSTACK_EVENTS_URL", "amqp://env")]);
        env.merge_toml_str("DIALSTACK_EVENTS_URL = \"memory://\"\nDIALSTACK_COMMANDS_URL = \"memory://toml\"\nDIALSTACK_DATABASE_URL = \"sqlite::memory:\"")
            .unwrap();
        let cfg = CommonConfig::from_env(&env, 8080).unwrap();
        assert_eq!(cfg.events_url, "amqp://env");
        assert_eq!(cfg.commands_url, "memory://toml");
        assert_eq!(cfg.http_addr.port(), 8080);
    }

    #[test]
    fn malformed_toml_is_a_config_error() {
        let mut env = Env::default();
        assert!(env.merge_toml_str("= nope").is_err());
    }
}
