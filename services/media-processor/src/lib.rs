//! media-processor is the SIP user agent of dialstack. It consumes `dial`
//! commands, claims each attempt on task-scheduler (dial once), places the
//! call over UDP to the trunk with an SDP offer (PCMU/PCMA), exchanges RTP
//! with the answered callee, hangs up after the talk time, and reports
//! `call.dialing`, `call.ringing`, `call.answered` and `call.completed`
//! through its outbox. `sim://` as the trunk starts a simulated carrier.
//!
//! # Layout
//! - [`sip`]: the SIP edge: message, sdp, dialog, digest, transport
//! - [`call`]: one call: the INVITE transaction ([`call::invite`]) and the
//!   answered session ([`call::session`]), phases in [`call::CallPhase`]
//! - [`rtp`]: RTP ports, the stream gate (source and SSRC), the tone, and
//!   the per-call media loop ([`rtp::stream`]: jitter buffer, statistics,
//!   RTCP, quality)
//! - [`recording`]: the recording writer, spool and upload
//! - [`sim`]: the simulated carrier
//! - [`scheduler_client`]: service token, attempt claims, lease heartbeats
//! - [`db`]: placed calls and event emission
//! - [`messaging`]: the `dial`/`hangup` consumer and the heartbeat
//! - [`http`]: routes, OpenAPI
//!
//! Service-specific settings: `DIALSTACK_SIP_TRUNK` (`sip:host:port`,
//! `;transport=tcp` for TCP, or `sim://?...`), `DIALSTACK_SIP_ADDR` (default `0.0.0.0:5060`),
//! `DIALSTACK_MEDIA_IP` (address put in SDP/Via/Contact; default: the local
//! address that routes to the trunk), `DIALSTACK_MEDIA_INTERFACE` (a network
//! interface, e.g. the Multus macvlan `net1`: SIP and RTP bind to its IPv4
//! address, which is also advertised; overrides `DIALSTACK_MEDIA_IP`), `DIALSTACK_RTP_PORTS` (default
//! `20000-29999`, `0` for ephemeral), `DIALSTACK_SIP_T1_MS` (default 500),
//! `DIALSTACK_MAX_CALLS` (default 1000), `DIALSTACK_SCHEDULER_URL`,
//! `DIALSTACK_USER_SERVICE_URL`, `DIALSTACK_SERVICE_USER` (default
//! `dialstack-service`), `DIALSTACK_SERVICE_PASSWORD`,
//! `DIALSTACK_SIP_USERNAME` / `DIALSTACK_SIP_PASSWORD` (digest credentials
//! for the trunk, both or neither), `DIALSTACK_RTP_LATCH` (`1`: accept and
//! send RTP to the first packet's source, for NATed carriers; default `0`),
//! `DIALSTACK_DRAIN_TALK_SECS` (how long answered calls go on after SIGTERM,
//! default a third of the shutdown grace, at most 10 s),
//! `DIALSTACK_SIP_KEEPALIVE_SECS` (OPTIONS to the trunk, default 30, 0 off;
//! while the trunk does not answer, no dial is claimed and readiness is red),
//! `DIALSTACK_LEASE_SECS` (claim lease on an attempt, renewed every third of
//! it while the call lives; default 30), `DIALSTACK_JITTER_BUFFER_MS`
//! (default 50), `DIALSTACK_JITTER_BUFFER_MODE` (`fixed` or `adaptive`),
//! `DIALSTACK_JITTER_BUFFER_MIN_MS` / `_MAX_MS` (adaptive bounds, default
//! 20 / 200), `DIALSTACK_RECORDINGS_URL` (`file:///...`, default
//! `./data/recordings`, or `s3://bucket/prefix` with `DIALSTACK_S3_*`),
//! `DIALSTACK_RECORDINGS_SPOOL` (where recordings are written before
//! upload, default `./data/recordings-spool`), `DIALSTACK_MAX_RECORDINGS`
//! (recordings at once, default 2000; more are shed),
//! `DIALSTACK_ENVIRONMENT` (`production` refuses the `sim://` trunk),
//! `DIALSTACK_AGENT_ANSWER_MS` (how long an agent's phone may ring before
//! the next agent is tried, default 8000, 500-60000),
//! `DIALSTACK_ABANDON_PROMPT` (a WAV file, PCM mono 8 kHz 16-bit, of the
//! compliance message an abandoned callee hears when its campaign has no
//! `abandon_message` of its own; default a built-in chime),
//! `DIALSTACK_TRANSFER_HOSTS` (comma-separated hosts an agent may transfer
//! a callee to by REFER, besides their own phone's host; default none).

pub mod ai;
pub mod call;
pub mod db;
pub mod http;
pub mod messaging;
pub mod prompts;
pub mod recording;
pub mod rtp;
pub mod scheduler_client;
pub mod sim;
pub mod sip;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dialstack_common::bus::Subscription;
use dialstack_common::config::{CommonConfig, ConfigError, Env};
use dialstack_common::service::{Built, Channels, Service, ServiceBase};
use dialstack_contract::types;
use tokio_util::sync::CancellationToken;

/// The service's name.
pub const NAME: &str = "media-processor";
/// Default HTTP port (DESIGN §1).
pub const PORT: u16 = 9090;

/// How long RabbitMQ keeps an instance's own command queue after the
/// instance went away (its calls went with it; a restarted pod is a new
/// instance with a new queue).
pub const INSTANCE_QUEUE_EXPIRES: std::time::Duration = std::time::Duration::from_secs(600);

/// Where calls go.
#[derive(Debug, Clone, PartialEq)]
pub enum Trunk {
    /// A real SIP peer at `host:port`.
    Sip(String),
    /// The simulated carrier.
    Sim(sim::SimConfig),
}

/// media-processor settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared settings.
    pub common: CommonConfig,
    /// The trunk.
    pub trunk: Trunk,
    /// Reach the trunk over TCP.
    pub trunk_tcp: bool,
    /// SIP bind address.
    pub sip_addr: SocketAddr,
    /// Address to advertise.
    pub media_ip: Option<IpAddr>,
    /// RTP port range.
    pub rtp_ports: String,
    /// T1.
    pub t1: Duration,
    /// Calls at once.
    pub max_calls: usize,
    /// task-scheduler base URL.
    pub scheduler_url: String,
    /// user-service base URL.
    pub users_url: String,
    /// Text to speech.
    pub tts: ai::tts::TtsConfig,
    /// Speech recognition.
    pub asr: ai::asr::AsrConfig,
    /// The key IVR webhooks are signed with (`DIALSTACK_WEBHOOK_SECRET`).
    pub webhook_secret: String,
    /// Webhooks may reach private addresses
    /// (`DIALSTACK_WEBHOOK_ALLOW_PRIVATE`).
    pub webhook_allow_private: bool,
    /// Service account.
    pub service_user: String,
    /// Its password.
    pub service_password: String,
    /// Digest credentials for the trunk.
    pub sip_credentials: Option<sip::digest::Credentials>,
    /// RTP latching.
    pub rtp_latch: bool,
    /// Talk time left to answered calls at shutdown.
    pub drain_talk: Duration,
    /// How long an agent's phone may ring.
    pub agent_answer: Duration,
    /// The compliance message for abandoned calls (8 kHz linear).
    pub abandon_prompt: Arc<Vec<i16>>,
    /// Hosts agents may transfer callees to, besides their phones' hosts.
    pub transfer_hosts: Vec<String>,
    /// Claim lease.
    pub lease: Duration,
    /// OPTIONS keepalive interval (`None`: off).
    pub keepalive: Option<Duration>,
    /// Jitter-buffer settings.
    pub jitter: dialstack_media::jitter::JitterConfig,
    /// Where recordings go.
    pub recordings: dialstack_common::recordings::RecordingStore,
    /// Where recordings are written before upload.
    pub recordings_spool: std::path::PathBuf,
    /// Recordings at once.
    pub max_recordings: usize,
}

/// Whether `DIALSTACK_SIP_TRUNK` asks for TCP (`;transport=tcp`); UDP is the
/// default; other transports are refused.
pub fn trunk_uses_tcp(v: &str) -> Result<bool, ConfigError> {
    let transport = v.split(';').skip(1).find_map(|p| {
        let (k, val) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("transport")
            .then(|| val.trim().to_ascii_lowercase())
    });
    match transport.as_deref() {
        None | Some("udp") => Ok(false),
        Some("tcp") => Ok(true),
        Some(other) => Err(ConfigError::new(
            "DIALSTACK_SIP_TRUNK",
            format!("transport {other} is not supported (udp or tcp)"),
        )),
    }
}

/// Parses `DIALSTACK_SIP_TRUNK`.
pub fn parse_trunk(v: &str) -> Result<Trunk, ConfigError> {
    let bad = |why: String| ConfigError::new("DIALSTACK_SIP_TRUNK", why);
    if v.starts_with("sim://") {
        return sim::SimConfig::parse(v).map(Trunk::Sim).map_err(bad);
    }
    let rest = v
        .strip_prefix("sip:")
        .ok_or_else(|| bad(format!("{v:?} must be sip:host[:port] or sim://")))?;
    let hostport = rest
        .trim_start_matches("//")
        .split(';')
        .next()
        .unwrap_or("");
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    if hostport.is_empty() {
        return Err(bad("no host".into()));
    }
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:5060")
    };
    Ok(Trunk::Sip(with_port))
}

impl Config {
    /// Reads the settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env, PORT)?.require_jwks()?;
        let trunk_url = env.required("DIALSTACK_SIP_TRUNK")?;
        let trunk = parse_trunk(&trunk_url)?;
        if matches!(trunk, Trunk::Sim(_))
            && env
                .get("DIALSTACK_ENVIRONMENT")
                .is_some_and(|e| e.eq_ignore_ascii_case("production"))
        {
            return Err(ConfigError::new(
                "DIALSTACK_SIP_TRUNK",
                "sim:// (the simulated carrier) is refused when DIALSTACK_ENVIRONMENT=production: set the carrier's sip: URI",
            ));
        }
        let trunk_tcp = matches!(trunk, Trunk::Sip(_)) && trunk_uses_tcp(&trunk_url)?;
        let rtp_ports = env.or("DIALSTACK_RTP_PORTS", "20000-29999");
        rtp::PortPool::parse(&rtp_ports).map_err(|e| ConfigError::new("DIALSTACK_RTP_PORTS", e))?;
        let t1_ms: u64 = env.parse_or("DIALSTACK_SIP_T1_MS", 500)?;
        if !(10..=5_000).contains(&t1_ms) {
            return Err(ConfigError::new("DIALSTACK_SIP_T1_MS", "must be 10-5000"));
        }
        let max_calls: usize = env.parse_or("DIALSTACK_MAX_CALLS", 1000)?;
        if max_calls == 0 {
            return Err(ConfigError::new(
                "DIALSTACK_MAX_CALLS",
                "must be at least 1",
            ));
        }
        let mut media_ip = match env.get("DIALSTACK_MEDIA_IP") {
            Some(_) => Some(env.parse_required("DIALSTACK_MEDIA_IP")?),
            None => None,
        };
        let mut sip_addr =
            env.parse_or("DIALSTACK_SIP_ADDR", SocketAddr::from(([0, 0, 0, 0], 5060)))?;
        if let Some(name) = env.get("DIALSTACK_MEDIA_INTERFACE") {
            let ip = interface_ipv4(name)
                .map_err(|e| ConfigError::new("DIALSTACK_MEDIA_INTERFACE", e))?;
            media_ip = Some(ip);
            sip_addr.set_ip(ip);
        }
        // Empty counts as unset (an optional Secret key left blank).
        let set = |k: &str| env.get(k).filter(|v| !v.is_empty());
        let sip_credentials = match (set("DIALSTACK_SIP_USERNAME"), set("DIALSTACK_SIP_PASSWORD")) {
            (None, None) => None,
            (Some(u), Some(p)) => {
                if u.chars().any(char::is_control) {
                    return Err(ConfigError::new(
                        "DIALSTACK_SIP_USERNAME",
                        "must not hold control characters",
                    ));
                }
                Some(sip::digest::Credentials {
                    username: u.to_owned(),
                    password: p.to_owned(),
                })
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "DIALSTACK_SIP_PASSWORD",
                    "must be set with DIALSTACK_SIP_USERNAME",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "DIALSTACK_SIP_USERNAME",
                    "must be set with DIALSTACK_SIP_PASSWORD",
                ))
            }
        };
        let rtp_latch = match env.or("DIALSTACK_RTP_LATCH", "0").as_str() {
            "0" => false,
            "1" => true,
            _ => return Err(ConfigError::new("DIALSTACK_RTP_LATCH", "must be 0 or 1")),
        };
        let grace = common.shutdown_grace.as_secs();
        let drain_secs: u64 = env.parse_or("DIALSTACK_DRAIN_TALK_SECS", (grace / 3).min(10))?;
        if drain_secs > 0 && drain_secs >= grace {
            return Err(ConfigError::new(
                "DIALSTACK_DRAIN_TALK_SECS",
                "must be below the shutdown grace",
            ));
        }
        let lease_secs: u64 =
            env.parse_or("DIALSTACK_LEASE_SECS", messaging::DEFAULT_LEASE.as_secs())?;
        if !(3..=300).contains(&lease_secs) {
            return Err(ConfigError::new("DIALSTACK_LEASE_SECS", "must be 3-300"));
        }
        let keepalive_secs: u64 = env.parse_or("DIALSTACK_SIP_KEEPALIVE_SECS", 30)?;
        if keepalive_secs > 3_600 {
            return Err(ConfigError::new(
                "DIALSTACK_SIP_KEEPALIVE_SECS",
                "must be 0 (off) to 3600",
            ));
        }
        let jitter =
            dialstack_media::jitter::JitterConfig::from_lookup(|k| env.get(k).map(str::to_owned))
                .map_err(|e| {
                let (var, why) = e
                    .split_once(": ")
                    .unwrap_or(("DIALSTACK_JITTER_BUFFER_MS", e.as_str()));
                ConfigError::new(var, why)
            })?;
        let recordings = dialstack_common::recordings::RecordingStore::from_env(env)?;
        let max_recordings: usize = env.parse_or("DIALSTACK_MAX_RECORDINGS", 2_000)?;
        let agent_answer_ms: u64 = env.parse_or("DIALSTACK_AGENT_ANSWER_MS", 8_000)?;
        if !(500..=60_000).contains(&agent_answer_ms) {
            return Err(ConfigError::new(
                "DIALSTACK_AGENT_ANSWER_MS",
                "must be 500-60000",
            ));
        }
        let abandon_prompt = match env.get("DIALSTACK_ABANDON_PROMPT").map(str::to_owned) {
            None => call::bridge::builtin_prompt(),
            Some(path) => {
                let bytes = std::fs::read(&path).map_err(|e| {
                    ConfigError::new("DIALSTACK_ABANDON_PROMPT", format!("{path}: {e}"))
                })?;
                call::bridge::read_wav(&bytes).map_err(|e| {
                    ConfigError::new("DIALSTACK_ABANDON_PROMPT", format!("{path}: {e}"))
                })?
            }
        };
        let mut transfer_hosts = Vec::new();
        for h in env.or("DIALSTACK_TRANSFER_HOSTS", "").split(',') {
            let h = h.trim();
            if h.is_empty() {
                continue;
            }
            let bare = h.trim_matches(['[', ']']);
            let name_ok = bare.len() <= 253
                && !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
            if !name_ok && bare.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(ConfigError::new(
                    "DIALSTACK_TRANSFER_HOSTS",
                    format!("{h:?}: not a host name or address"),
                ));
            }
            transfer_hosts.push(bare.to_ascii_lowercase());
        }
        let production = env
            .get("DIALSTACK_ENVIRONMENT")
            .is_some_and(|e| e.eq_ignore_ascii_case("production"));
        let webhook_secret = env
            .get("DIALSTACK_WEBHOOK_SECRET")
            .filter(|v| !v.is_empty())
            .unwrap_or(DEV_WEBHOOK_SECRET)
            .to_owned();
        if production && webhook_secret == DEV_WEBHOOK_SECRET {
            return Err(ConfigError::new(
                "DIALSTACK_WEBHOOK_SECRET",
                "is the development placeholder; set a secret of your own in production",
            ));
        }
        if webhook_secret.len() < 16 {
            return Err(ConfigError::new(
                "DIALSTACK_WEBHOOK_SECRET",
                "must be at least 16 characters",
            ));
        }
        let webhook_allow_private = match env.or("DIALSTACK_WEBHOOK_ALLOW_PRIVATE", "0").as_str() {
            "0" | "false" => false,
            "1" | "true" => true,
            other => {
                return Err(ConfigError::new(
                    "DIALSTACK_WEBHOOK_ALLOW_PRIVATE",
                    format!("{other:?}: must be 0 or 1"),
                ))
            }
        };
        Ok(Self {
            tts: ai::tts::TtsConfig::from_env(env)?,
            asr: ai::asr::AsrConfig::from_env(env)?,
            webhook_secret,
            webhook_allow_private,
            agent_answer: Duration::from_millis(agent_answer_ms),
            abandon_prompt: Arc::new(abandon_prompt),
            transfer_hosts,
            jitter,
            recordings,
            recordings_spool: env
                .or("DIALSTACK_RECORDINGS_SPOOL", "./data/recordings-spool")
                .into(),
            max_recordings,
            keepalive: (keepalive_secs > 0).then(|| Duration::from_secs(keepalive_secs)),
            lease: Duration::from_secs(lease_secs),
            sip_credentials,
            trunk_tcp,
            rtp_latch,
            drain_talk: Duration::from_secs(drain_secs),
            common,
            trunk,
            sip_addr,
            media_ip,
            rtp_ports,
            t1: Duration::from_millis(t1_ms),
            max_calls,
            scheduler_url: env.required("DIALSTACK_SCHEDULER_URL")?,
            users_url: env.required("DIALSTACK_USER_SERVICE_URL")?,
            service_user: env.or("DIALSTACK_SERVICE_USER", "dialstack-service"),
            service_password: env.required("DIALSTACK_SERVICE_PASSWORD")?,
        })
    }
}

/// The webhook signing key used when none is configured (refused in
/// production).
pub const DEV_WEBHOOK_SECRET: &str = "dev-webhook-secret-change-me";

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Call context.
    pub ctx: Arc<call::CallContext>,
    /// Prompts.
    pub prompts: prompts::PromptState,
    /// Live calls.
    pub live: messaging::LiveCalls,
}

/// Post-call transcripts with the recognizer.
struct AsrTranscriber(Arc<ai::asr::Asr>);

#[async_trait::async_trait]
impl recording::Transcriber for AsrTranscriber {
    async fn transcribe(&self, pcm: &[i16]) -> anyhow::Result<(String, Option<f32>)> {
        let r = self.0.transcribe(pcm).await?;
        Ok((r.text, Some(r.confidence)))
    }

    fn engine(&self) -> String {
        self.0.engine_name()
    }
}

/// A built media-processor.
pub struct Application(Built);

/// The local address the OS would use to reach `peer`.
/// The IPv4 address of network interface `name` (SIP and RTP are IPv4 here).
pub fn interface_ipv4(name: &str) -> Result<IpAddr, String> {
    let all = if_addrs::get_if_addrs().map_err(|e| format!("cannot list interfaces: {e}"))?;
    pick_ipv4(all.iter().map(|i| (i.name.as_str(), i.ip())), name)
}

/// The first IPv4 address of `name` among `(interface, address)` pairs.
pub fn pick_ipv4<'a>(
    addrs: impl Iterator<Item = (&'a str, IpAddr)>,
    name: &str,
) -> Result<IpAddr, String> {
    let mut seen = false;
    for (iface, ip) in addrs {
        if iface == name {
            seen = true;
            if ip.is_ipv4() {
                return Ok(ip);
            }
        }
    }
    Err(if seen {
        format!("interface {name:?} has no IPv4 address")
    } else {
        format!("no interface {name:?}")
    })
}

fn route_to(peer: SocketAddr) -> std::io::Result<IpAddr> {
    let probe = std::net::UdpSocket::bind(if peer.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    probe.connect(peer)?;
    Ok(probe.local_addr()?.ip())
}

impl Service for Application {
    type Config = Config;

    fn config(env: &Env) -> Result<Config, ConfigError> {
        Config::from_env(env)
    }

    async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let base = ServiceBase::start(
            NAME,
            config.common.clone(),
            db::MIGRATIONS,
            Channels {
                events: true,
                commands: true,
            },
            shutdown,
        )
        .await?;
        let (trunk_addrs, trunk_host) = match &config.trunk {
            Trunk::Sip(hostport) => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport).await?.collect();
                if addrs.is_empty() {
                    anyhow::bail!("DIALSTACK_SIP_TRUNK: {hostport} does not resolve");
                }
                (addrs, hostport.clone())
            }
            Trunk::Sim(sim_config) => {
                let addr = sim::SimTrunk::start(sim_config.clone(), base.shutdown.clone()).await?;
                (vec![addr], addr.to_string())
            }
        };
        let trunk = trunk_addrs[0];
        let media_ip = match config.media_ip {
            Some(ip) => ip,
            None => route_to(trunk)?,
        };
        let sip_metrics = sip::SipMetrics::new().with_zeros();
        base.metrics.register(&sip_metrics.dropped);
        base.metrics.register(&sip_metrics.restarts);
        base.metrics.register(&sip_metrics.rtp_dropped);
        base.metrics.register(&sip_metrics.rtp_frames_skipped);
        let setup = base.metrics.register(&prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "dialstack_call_setup_seconds",
                "time from INVITE to answer or final response",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
            ]),
        )?);
        let active = base.metrics.register(&prometheus::IntGauge::new(
            "dialstack_media_calls_in_progress",
            "calls this media processor is handling now",
        )?);
        let media_metrics = rtp::metrics::MediaMetrics::new()?;
        media_metrics.register(&base.metrics);
        let recording_metrics = recording::RecordingMetrics::new()?;
        recording_metrics.register(&base.metrics);
        let store = Arc::new(config.recordings.clone());
        store.check().await.map_err(|e| {
            anyhow::anyhow!("DIALSTACK_RECORDINGS_URL: the recording store does not answer: {e}")
        })?;
        let recorder = recording::Recorder::start(
            config.recordings_spool.clone(),
            config.max_recordings,
            store,
            Arc::new(recording::OutboxAnnounce {
                repo: db::Repo {
                    db: base.db.clone(),
                },
                relay: base.relay.clone(),
            }),
            recording_metrics,
            base.shutdown.clone(),
        )
        .map_err(|e| anyhow::anyhow!("DIALSTACK_RECORDINGS_SPOOL: {e}"))?;
        let trunk_health =
            sip::keepalive::TrunkHealth::new(base.metrics.register(&prometheus::IntGauge::new(
                "dialstack_trunk_up",
                "1 while the SIP trunk answers OPTIONS, 0 while it does not",
            )?));
        let tcp_trunk = config.trunk_tcp.then_some(trunk);
        let transport =
            sip::SipTransport::bind_with(config.sip_addr, trunk_addrs, tcp_trunk, sip_metrics)
                .await?;
        // The SIP edge outlives the consumers: it stops only once every call
        // has ended (late 200s ACKed, CANCELs and BYEs answered).
        let sip_stop = CancellationToken::new();
        tokio::spawn(transport.clone().run(sip_stop.clone()));
        base.readiness
            .add(Arc::new(sip::transport::SipReady(transport.clone())));
        tracing::info!(sip = %transport.local_addr()?, %trunk, %media_ip, auth = config.sip_credentials.is_some(), "sip user agent ready");
        let client = Arc::new(scheduler_client::SchedulerClient::new(
            &config.scheduler_url,
            &config.users_url,
            &config.service_user,
            &config.service_password,
            &config.common.tls,
        ));
        let bridge_metrics = call::bridge::BridgeMetrics::new()?;
        base.metrics.register(&bridge_metrics.calls);
        base.metrics.register(&bridge_metrics.agent_legs);
        base.metrics.register(&bridge_metrics.wait);
        base.metrics.register(&bridge_metrics.transfers);
        let bridge = Arc::new(call::bridge::BridgeContext {
            desk: client.clone(),
            agent_answer: config.agent_answer,
            prompt: config.abandon_prompt.clone(),
            metrics: bridge_metrics,
            transfer_hosts: config.transfer_hosts.clone(),
            transfers: Default::default(),
        });
        let ai_metrics = ai::metrics::AiMetrics::new()?;
        ai_metrics.register(&base.metrics);
        let ivr_metrics = call::ivr::IvrMetrics::new()?;
        ivr_metrics.register(&base.metrics);
        let prompts = prompts::PromptRepo::new(base.db.clone());
        // Without espeak-ng (or a writable cache) the service still places
        // calls: IVR flows and machine detection fall back to the tone,
        // text prompts answer 503, and the reason is logged at start.
        let tts = Arc::new(ai::tts::Tts::new(config.tts.clone(), ai_metrics.clone()));
        let tts = match tts.check() {
            Ok(()) => Some(tts),
            Err(e) => {
                tracing::error!(error = %e, "text to speech unavailable: IVR flows and machine detection are off in this process");
                None
            }
        };
        let ivr = match &tts {
            Some(tts) => {
                let asr = Arc::new(ai::asr::Asr::new(config.asr.clone(), ai_metrics));
                recorder.set_transcriber(Arc::new(AsrTranscriber(asr.clone())));
                Some(Arc::new(call::ivr::IvrContext {
                    tts: tts.clone(),
                    asr,
                    prompts: Arc::new(prompts.clone()),
                    webhooks: call::ivr::webhook::Webhooks::with_tls(
                        config.webhook_secret.as_bytes().to_vec(),
                        Duration::from_secs(5),
                        config.webhook_allow_private,
                        &config.common.tls,
                    )?,
                    messages: Some(recorder.store().clone()),
                    amd: dialstack_media::amd::AmdConfig::default(),
                    metrics: ivr_metrics,
                }))
            }
            None => None,
        };
        let ctx = Arc::new(call::CallContext {
            bridge: Some(bridge),
            ivr,
            transport,
            trunk,
            trunk_host,
            media_ip,
            ports: Arc::new(
                rtp::PortPool::parse(&config.rtp_ports)
                    .map_err(|e| anyhow::anyhow!("DIALSTACK_RTP_PORTS: {e}"))?,
            ),
            t1: config.t1,
            setup_seconds: setup,
            credentials: config.sip_credentials.clone(),
            drain_talk: config.drain_talk,
            media: Arc::new(rtp::stream::MediaContext {
                jitter: config.jitter.clone(),
                latch: config.rtp_latch,
                metrics: media_metrics,
                recorder: Some(recorder),
            }),
        });
        let claimer = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| NAME.to_owned()),
            uuid::Uuid::now_v7().simple()
        );
        let calls = tokio_util::task::TaskTracker::new();
        let live = messaging::LiveCalls::default();
        let handler = Arc::new(messaging::CommandHandler {
            ctx: ctx.clone(),
            client: client.clone(),
            claimer: claimer.clone(),
            log: db::CallLog::start(base.db.clone()),
            relay: base.relay.clone(),
            calls: calls.clone(),
            limit: Arc::new(tokio::sync::Semaphore::new(config.max_calls)),
            shutdown: base.shutdown.clone(),
            active,
            live: live.clone(),
            lease: config.lease,
            trunk: trunk_health.clone(),
        });
        if let Some(commands) = &base.commands {
            // First this instance's own queue (hang-ups and transfers of the
            // calls it claims are addressed to it), so that it is in place
            // before the first claim; then the shared queue of dials.
            let hangup = dialstack_contract::instance_route(types::HANGUP, &claimer);
            let transfer = dialstack_contract::instance_route(types::TRANSFER, &claimer);
            base.spawn_consumer(
                commands,
                Subscription::for_instance(
                    dialstack_contract::instance_route(NAME, &claimer),
                    &[&hangup, &transfer],
                    INSTANCE_QUEUE_EXPIRES,
                )
                .with_concurrency(16),
                handler.clone(),
            )
            .await?;
            base.spawn_consumer(
                commands,
                Subscription::new(NAME, &[types::DIAL, types::HANGUP]).with_concurrency(64),
                handler,
            )
            .await?;
        }
        let heartbeat_stop = CancellationToken::new();
        if let Some(every) = config.keepalive {
            base.readiness
                .add(Arc::new(sip::keepalive::TrunkReady(trunk_health.clone())));
            let sip_port = ctx.transport.local_addr()?.port();
            tokio::spawn(sip::keepalive::run(
                ctx.transport.clone(),
                format!("{}:{sip_port}", ctx.media_ip),
                ctx.trunk,
                ctx.trunk_host.clone(),
                ctx.t1,
                every,
                trunk_health,
                heartbeat_stop.clone(),
            ));
        }
        tokio::spawn(messaging::run_heartbeat(
            client,
            claimer,
            live.clone(),
            db::Repo {
                db: base.db.clone(),
            },
            config.lease,
            heartbeat_stop.clone(),
        ));
        // Drain: after SIGTERM the consumer stops taking dials; calls end
        // (ringing ones canceled, answered ones given the drain talk time),
        // each emitting call.completed; then the heartbeat and the SIP edge stop.
        let shutdown = base.shutdown.clone();
        base.tasks.spawn(async move {
            shutdown.cancelled().await;
            calls.close();
            calls.wait().await;
            heartbeat_stop.cancel();
            sip_stop.cancel();
            tracing::info!("calls drained, sip edge stopped");
        });
        let keys = base
            .keys
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no JWKS configured"))?;
        Ok(Self(
            Built::new(
                base,
                http::router(
                    AppState {
                        ctx,
                        live,
                        prompts: prompts::PromptState { repo: prompts, tts },
                    },
                    keys,
                ),
                http::openapi(),
            )
            .await?,
        ))
    }

    fn local_addr(&self) -> std::net::SocketAddr {
        self.0.local_addr()
    }

    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.0.run().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variable media-processor requires, with harmless values.
    fn required_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("DIALSTACK_SIP_TRUNK", "sim://"),
            ("DIALSTACK_DATABASE_URL", "sqlite://media.db"),
            ("DIALSTACK_JWKS_URL", "http://127.0.0.1:1/jwks"),
            ("DIALSTACK_EVENTS_URL", "memory://"),
            ("DIALSTACK_COMMANDS_URL", "memory://"),
            ("DIALSTACK_SCHEDULER_URL", "http://127.0.0.1:1"),
            ("DIALSTACK_USER_SERVICE_URL", "http://127.0.0.1:1"),
            ("DIALSTACK_SERVICE_PASSWORD", "service account secret 42"),
        ]
    }

    #[test]
    fn trunk_urls() {
        assert_eq!(
            parse_trunk("sip:carrier.example.net").unwrap(),
            Trunk::Sip("carrier.example.net:5060".into())
        );
        assert_eq!(
            parse_trunk("sip:127.0.0.1:5080").unwrap(),
            Trunk::Sip("127.0.0.1:5080".into())
        );
        assert_eq!(
            parse_trunk("sip:user@10.0.0.1:5070;transport=udp").unwrap(),
            Trunk::Sip("10.0.0.1:5070".into())
        );
        assert!(matches!(
            parse_trunk("sim://?answer=1").unwrap(),
            Trunk::Sim(_)
        ));
        assert!(trunk_uses_tcp("sip:10.0.0.1:5070;transport=TCP").unwrap());
        assert!(!trunk_uses_tcp("sip:10.0.0.1:5070;transport=udp").unwrap());
        assert!(!trunk_uses_tcp("sip:10.0.0.1").unwrap());
        assert_eq!(
            trunk_uses_tcp("sip:10.0.0.1;transport=tls")
                .unwrap_err()
                .var,
            "DIALSTACK_SIP_TRUNK"
        );
        let e = parse_trunk("http://x").unwrap_err();
        assert_eq!(e.var, "DIALSTACK_SIP_TRUNK");
        assert!(parse_trunk("sim://?answer=7").is_err());
    }

    #[test]
    fn media_interface_picks_its_ipv4_address() {
        let v6: IpAddr = "fe80::1".parse().unwrap();
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        let addrs = [
            ("eth0", "10.0.0.5".parse().unwrap()),
            ("net1", v6),
            ("net1", v4),
        ];
        assert_eq!(pick_ipv4(addrs.into_iter(), "net1"), Ok(v4));
        assert!(pick_ipv4([("net1", v6)].into_iter(), "net1")
            .unwrap_err()
            .contains("no IPv4"));
        assert!(pick_ipv4(addrs.into_iter(), "net9")
            .unwrap_err()
            .contains("no interface"));
        // The real lookup, on the loopback interface every host has.
        assert_eq!(interface_ipv4("lo"), Ok(IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn media_interface_binds_sip_and_names_itself_when_missing() {
        let mut base = required_env();
        base.extend([
            ("DIALSTACK_SIP_ADDR", "0.0.0.0:5070"),
            ("DIALSTACK_MEDIA_IP", "203.0.113.7"),
        ]);
        let with = |iface: &str| {
            let mut pairs = base.to_vec();
            pairs.push(("DIALSTACK_MEDIA_INTERFACE", iface));
            Config::from_env(&Env::from_pairs(pairs))
        };
        let c = with("lo").unwrap();
        assert_eq!(c.sip_addr, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(c.media_ip, Some(IpAddr::from([127, 0, 0, 1])));
        let e = with("no-such-if0").unwrap_err();
        assert_eq!(e.var, "DIALSTACK_MEDIA_INTERFACE");
        let c = Config::from_env(&Env::from_pairs(base)).unwrap();
        assert_eq!(c.media_ip, Some(IpAddr::from([203, 0, 113, 7])));
    }

    #[test]
    fn production_refuses_the_simulated_carrier_and_agent_settings_are_checked() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = required_env();
            pairs.extend_from_slice(extra);
            Config::from_env(&Env::from_pairs(pairs))
        };
        let e = with(&[("DIALSTACK_ENVIRONMENT", "production")]).unwrap_err();
        assert_eq!(e.var, "DIALSTACK_SIP_TRUNK");
        assert!(e.to_string().contains("production"), "{e}");
        let e = with(&[("DIALSTACK_ENVIRONMENT", "Production")]).unwrap_err();
        assert_eq!(e.var, "DIALSTACK_SIP_TRUNK");
        // A real carrier in production, and the simulator elsewhere, are fine.
        let mut pairs = required_env();
        pairs.retain(|(k, _)| *k != "DIALSTACK_SIP_TRUNK");
        pairs.extend([
            ("DIALSTACK_SIP_TRUNK", "sip:127.0.0.1:5080"),
            ("DIALSTACK_ENVIRONMENT", "production"),
        ]);
        // ... once the webhook key is not the development placeholder.
        let e = Config::from_env(&Env::from_pairs(pairs.clone())).unwrap_err();
        assert_eq!(e.var, "DIALSTACK_WEBHOOK_SECRET");
        assert!(e.to_string().contains("placeholder"), "{e}");
        pairs.push(("DIALSTACK_WEBHOOK_SECRET", "a real secret of the operator"));
        assert!(Config::from_env(&Env::from_pairs(pairs)).is_ok());
        let e = with(&[("DIALSTACK_WEBHOOK_SECRET", "short")]).unwrap_err();
        assert_eq!(e.var, "DIALSTACK_WEBHOOK_SECRET");
        let e = with(&[("DIALSTACK_WEBHOOK_ALLOW_PRIVATE", "yes")]).unwrap_err();
        assert_eq!(e.var, "DIALSTACK_WEBHOOK_ALLOW_PRIVATE");
        assert!(
            with(&[("DIALSTACK_WEBHOOK_SECRET", "")]).is_ok(),
            "blank is unset"
        );
        assert!(with(&[("DIALSTACK_ENVIRONMENT", "staging")]).is_ok());
        // Agent answer time and the compliance recording.
        let c = with(&[]).unwrap();
        assert_eq!(c.agent_answer, Duration::from_millis(8_000));
        assert_eq!(c.abandon_prompt.len(), 12_000);
        for bad in ["0", "100", "600000", "soon"] {
            let e = with(&[("DIALSTACK_AGENT_ANSWER_MS", bad)]).unwrap_err();
            assert_eq!(e.var, "DIALSTACK_AGENT_ANSWER_MS", "{bad}");
        }
        // Transfer hosts: a list, lower-cased; anything but host names
        // and addresses refused.
        assert!(c.transfer_hosts.is_empty());
        let c = with(&[("DIALSTACK_TRANSFER_HOSTS", " PBX.example, 10.0.0.7 ,[::1],")]).unwrap();
        assert_eq!(c.transfer_hosts, ["pbx.example", "10.0.0.7", "::1"]);
        for bad in ["pbx.example/x", "a b", "sip:pbx", "*"] {
            let e = with(&[("DIALSTACK_TRANSFER_HOSTS", bad)]).unwrap_err();
            assert_eq!(e.var, "DIALSTACK_TRANSFER_HOSTS", "{bad}");
        }
        let e = with(&[("DIALSTACK_ABANDON_PROMPT", "/no/such/prompt.wav")]).unwrap_err();
        assert_eq!(e.var, "DIALSTACK_ABANDON_PROMPT");
        let dir = std::env::temp_dir().join(format!("dialstack-prompt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_wav = dir.join("not.wav");
        std::fs::write(&not_wav, b"hello").unwrap();
        let path: &'static str = Box::leak(not_wav.display().to_string().into_boxed_str());
        let e = with(&[("DIALSTACK_ABANDON_PROMPT", path)]).unwrap_err();
        assert!(e.to_string().contains("RIFF"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sip_edge_settings_are_checked_and_name_their_variable() {
        let base = required_env();
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            Config::from_env(&Env::from_pairs(pairs))
        };
        let c = with(&[]).unwrap();
        assert!(c.sip_credentials.is_none() && !c.rtp_latch);
        assert_eq!(c.lease, Duration::from_secs(30));
        assert_eq!(c.keepalive, Some(Duration::from_secs(30)));
        let c = with(&[
            ("DIALSTACK_SIP_USERNAME", "trunkuser"),
            ("DIALSTACK_SIP_PASSWORD", "s3cret"),
            ("DIALSTACK_RTP_LATCH", "1"),
            ("DIALSTACK_SIP_KEEPALIVE_SECS", "0"),
        ])
        .unwrap();
        assert_eq!(c.sip_credentials.unwrap().username, "trunkuser");
        assert!(c.rtp_latch && c.keepalive.is_none());
        // Blank keys (an optional Secret left empty) mean no credentials.
        let c = with(&[
            ("DIALSTACK_SIP_USERNAME", ""),
            ("DIALSTACK_SIP_PASSWORD", ""),
        ])
        .unwrap();
        assert!(c.sip_credentials.is_none());
        for (extra, var) in [
            (
                &[("DIALSTACK_SIP_USERNAME", "u")][..],
                "DIALSTACK_SIP_PASSWORD",
            ),
            (
                &[("DIALSTACK_SIP_PASSWORD", "p")][..],
                "DIALSTACK_SIP_USERNAME",
            ),
            (&[("DIALSTACK_RTP_LATCH", "yes")][..], "DIALSTACK_RTP_LATCH"),
            (&[("DIALSTACK_LEASE_SECS", "1")][..], "DIALSTACK_LEASE_SECS"),
            (
                &[("DIALSTACK_SIP_KEEPALIVE_SECS", "99999")][..],
                "DIALSTACK_SIP_KEEPALIVE_SECS",
            ),
            (
                &[("DIALSTACK_DRAIN_TALK_SECS", "999")][..],
                "DIALSTACK_DRAIN_TALK_SECS",
            ),
        ] {
            assert_eq!(with(extra).unwrap_err().var, var);
        }
    }
}
