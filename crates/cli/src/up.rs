//! `dialstack up`: the five services in one process.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use dialstack_common::config::Env;
use dialstack_common::service::Service;
use tokio_util::sync::CancellationToken;

/// `dialstack up` options.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Folder for the SQLite databases and generated secrets.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Address the HTTP APIs listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Pick free ports instead of the standard ones (8080-8083, 9090, SIP 5060).
    #[arg(long)]
    ephemeral_ports: bool,
    /// The trunk: `sim://?...` or `sip:host:port`.
    #[arg(long, env = "DIALSTACK_SIP_TRUNK", default_value = "sim://")]
    trunk: String,
    /// Log format: pretty or json.
    #[arg(long, env = "DIALSTACK_LOG_FORMAT", default_value = "pretty")]
    log_format: String,
    /// Log filter.
    #[arg(long, env = "RUST_LOG", default_value = "warn")]
    log: String,
    /// Run a demo campaign once the suite is up.
    #[arg(long)]
    demo: bool,
    /// Contacts in the demo campaign.
    #[arg(long, default_value_t = 200)]
    demo_contacts: usize,
}

/// Reads a secret from `path`, or creates a random one there (mode 0600).
pub fn secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let mut bytes = [0u8; 18];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, &s)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(s)
}

fn port(ephemeral: bool, standard: u16) -> u16 {
    if ephemeral {
        0
    } else {
        standard
    }
}

async fn start<S: Service>(
    name: &str,
    env: &Env,
    shutdown: &CancellationToken,
    tasks: &mut Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<SocketAddr> {
    let config = S::config(env).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let app = S::build(config, shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{name} failed to start: {e:#}"))?;
    let addr = app.local_addr();
    println!("{name:<16} listening on http://{addr}");
    tasks.push(tokio::spawn(app.run_until_stopped()));
    Ok(addr)
}

/// The `DIALSTACK_*` variables among `vars`, for the services `up` runs.
pub fn inherited(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.filter(|(k, _)| k.starts_with("DIALSTACK_")).collect()
}

/// Runs the suite until Ctrl-C.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    dialstack_common::telemetry::init(Some(&args.log_format), Some(&args.log));
    std::fs::create_dir_all(&args.data_dir)?;
    let data = std::fs::canonicalize(&args.data_dir)?;
    let admin_password = match std::env::var("DIALSTACK_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => p,
        _ => secret(&data.join("admin-password"))?,
    };
    let service_password = secret(&data.join("service-password"))?;
    let bus = format!("memory://up-{}", std::process::id());
    let inherited = inherited(std::env::vars());
    let base = |name: &str, port: u16| {
        // Every DIALSTACK_* variable of our environment reaches every
        // service (a real trunk and its credentials, say); the wiring of
        // the one process (ports, databases, in-process channels) and the
        // flags below win over it.
        let mut env = Env::from_pairs(inherited.clone());
        env.set(
            "DIALSTACK_HTTP_ADDR",
            SocketAddr::new(args.bind, port).to_string(),
        );
        env.set(
            "DIALSTACK_DATABASE_URL",
            format!("sqlite://{}/{name}.db", data.display()),
        );
        env.set("DIALSTACK_EVENTS_URL", bus.clone());
        env.set("DIALSTACK_COMMANDS_URL", bus.clone());
        // Recordings stay under the data folder unless the environment
        // names a store (an S3 bucket, say).
        if env.get("DIALSTACK_RECORDINGS_URL").is_none() {
            env.set(
                "DIALSTACK_RECORDINGS_URL",
                format!("file://{}/recordings", data.display()),
            );
        }
        if env.get("DIALSTACK_RECORDINGS_SPOOL").is_none() {
            env.set(
                "DIALSTACK_RECORDINGS_SPOOL",
                data.join("recordings-spool").display().to_string(),
            );
        }
        if env.get("DIALSTACK_AUDIO_CACHE").is_none() {
            env.set(
                "DIALSTACK_AUDIO_CACHE",
                data.join("audio-cache").display().to_string(),
            );
        }
        env
    };
    let shutdown = dialstack_common::shutdown::on_signals();
    let mut tasks = Vec::new();
    let eph = args.ephemeral_ports;

    let mut env = base("user-service", port(eph, user_service::PORT));
    env.set("DIALSTACK_ADMIN_PASSWORD", admin_password.clone());
    env.set("DIALSTACK_SERVICE_PASSWORD", service_password.clone());
    let users =
        start::<user_service::Application>("user-service", &env, &shutdown, &mut tasks).await?;
    let users_url = format!("http://{users}");
    let jwks = format!("{users_url}/.well-known/jwks.json");

    let mut env = base("task-scheduler", port(eph, task_scheduler::PORT));
    env.set("DIALSTACK_JWKS_URL", jwks.clone());
    // Dispositions end the agent's wrap-up there.
    env.set("DIALSTACK_USER_SERVICE_URL", users_url.clone());
    let scheduler =
        start::<task_scheduler::Application>("task-scheduler", &env, &shutdown, &mut tasks).await?;

    let mut env = base("storage-service", port(eph, storage_service::PORT));
    env.set("DIALSTACK_JWKS_URL", jwks.clone());
    let storage =
        start::<storage_service::Application>("storage-service", &env, &shutdown, &mut tasks)
            .await?;

    let mut env = base("monitor-service", port(eph, monitor_service::PORT));
    env.set("DIALSTACK_JWKS_URL", jwks.clone());
    let monitor =
        start::<monitor_service::Application>("monitor-service", &env, &shutdown, &mut tasks)
            .await?;

    let mut env = base("media-processor", port(eph, media_processor::PORT));
    env.set("DIALSTACK_JWKS_URL", jwks);
    env.set("DIALSTACK_SIP_TRUNK", args.trunk.clone());
    env.set(
        "DIALSTACK_SIP_ADDR",
        SocketAddr::new(args.bind, port(eph, 5060)).to_string(),
    );
    env.set("DIALSTACK_RTP_PORTS", if eph { "0" } else { "20000-29999" });
    env.set("DIALSTACK_SCHEDULER_URL", format!("http://{scheduler}"));
    env.set("DIALSTACK_USER_SERVICE_URL", users_url.clone());
    env.set("DIALSTACK_SERVICE_PASSWORD", service_password);
    start::<media_processor::Application>("media-processor", &env, &shutdown, &mut tasks).await?;

    println!(
        "admin password in {}",
        data.join("admin-password").display()
    );
    println!("suite is up; Ctrl-C stops it");

    if args.demo {
        let demo = crate::demo::DemoArgs::local(
            users,
            scheduler,
            storage,
            monitor,
            admin_password,
            args.demo_contacts,
        );
        tokio::select! {
            r = crate::demo::run(demo) => {
                r?;
                println!("demo done; the suite keeps running until Ctrl-C");
            }
            _ = shutdown.cancelled() => {}
        }
    }
    shutdown.cancelled().await;
    for t in tasks {
        match t.await {
            Ok(Err(e)) => eprintln!("service stopped with an error: {e:#}"),
            Err(e) => eprintln!("service task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_dialstack_variables_are_handed_on() {
        let vars = [
            ("DIALSTACK_SIP_USERNAME", "carrier-user"),
            ("PATH", "/bin"),
            ("XDIALSTACK_NOPE", "x"),
            ("DIALSTACK_SIP_TRUNK", "sip:carrier.example.net"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let got = super::inherited(vars.into_iter());
        assert_eq!(
            got,
            [
                (
                    "DIALSTACK_SIP_USERNAME".to_owned(),
                    "carrier-user".to_owned()
                ),
                (
                    "DIALSTACK_SIP_TRUNK".to_owned(),
                    "sip:carrier.example.net".to_owned()
                ),
            ]
        );
    }
}
