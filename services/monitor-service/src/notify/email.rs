//! E-mail over SMTP with lettre: plain, STARTTLS (required, not
//! opportunistic) or TLS from the first byte; an HTML part with a plain-text
//! alternative; one message to all of a channel's recipients. TLS is rustls
//! with the system's CAs plus `DIALSTACK_CA_FILE`'s, when set.

use std::time::Duration;

use dialstack_common::config::Env;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{Message, SendError};
use crate::domain::channel::{ChannelSpec, SmtpTls};

/// Sends `msg` through the SMTP server of `spec` (an e-mail channel).
pub async fn send(
    spec: &ChannelSpec,
    env: &Env,
    msg: &Message,
    timeout: Duration,
) -> Result<(), SendError> {
    let ChannelSpec::Email {
        smtp_host,
        smtp_port,
        tls,
        username,
        password_env,
        from,
        to,
    } = spec
    else {
        return Err(SendError::Permanent("not an e-mail channel".into()));
    };
    let permanent =
        |what: &str, e: &dyn std::fmt::Display| SendError::Permanent(format!("{what}: {e}"));
    let from: Mailbox = from.parse().map_err(|e| permanent("from", &e))?;
    let mut builder = lettre::Message::builder().from(from).subject(msg.title());
    for t in to {
        builder = builder.to(t.parse::<Mailbox>().map_err(|e| permanent("to", &e))?);
    }
    let mail = builder
        .multipart(MultiPart::alternative_plain_html(msg.text(), msg.html()))
        .map_err(|e| permanent("message", &e))?;
    let ca = match env.get(dialstack_common::tls::CA_FILE_VAR) {
        None => None,
        Some(path) => {
            let pem = dialstack_common::tls::read_ca_file(std::path::Path::new(path))
                .map_err(|e| permanent(dialstack_common::tls::CA_FILE_VAR, &e))?;
            Some(
                Certificate::from_pem(pem.as_bytes())
                    .map_err(|e| permanent(dialstack_common::tls::CA_FILE_VAR, &e))?,
            )
        }
    };
    // With an extra CA the TLS parameters are built here; without, lettre's
    // relay constructors build the same with the system's CAs only.
    let with_ca = |ca: Certificate| {
        TlsParameters::builder(smtp_host.clone())
            .add_root_certificate(ca)
            .build_rustls()
            .map_err(|e| permanent("smtp tls", &e))
    };
    let mut transport = match (tls, ca) {
        (SmtpTls::None, _) => {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp_host.as_str())
        }
        (SmtpTls::Starttls, None) => {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(smtp_host)
                .map_err(|e| permanent("smtp_host", &e))?
        }
        (SmtpTls::Tls, None) => AsyncSmtpTransport::<Tokio1Executor>::relay(smtp_host)
            .map_err(|e| permanent("smtp_host", &e))?,
        (SmtpTls::Starttls, Some(ca)) => {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp_host.as_str())
                .tls(Tls::Required(with_ca(ca)?))
        }
        (SmtpTls::Tls, Some(ca)) => {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp_host.as_str())
                .tls(Tls::Wrapper(with_ca(ca)?))
        }
    }
    .port(*smtp_port)
    .timeout(Some(timeout));
    if let (Some(user), Some(var)) = (username, password_env) {
        let password = env
            .get(var)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| SendError::Permanent(format!("{var} is not set")))?;
        transport = transport.credentials(Credentials::new(user.clone(), password.to_owned()));
    }
    let transport = transport.build();
    match tokio::time::timeout(timeout * 2, transport.send(mail)).await {
        Err(_) => Err(SendError::Transient("smtp timed out".into())),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.is_permanent() => Err(SendError::Permanent(format!("smtp refused: {e}"))),
        Ok(Err(e)) => Err(SendError::Transient(format!("smtp: {e}"))),
    }
}
