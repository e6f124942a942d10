//! Real processes: the service binaries, the whole suite, and SIPp.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The workspace's target folder.
pub fn target_dir() -> PathBuf {
    match std::env::var("CARGO_TARGET_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// Path of a workspace binary built by `cargo build --workspace --bins`.
pub fn bin_path(name: &str) -> PathBuf {
    let p = target_dir().join("debug").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Folder for a test's process logs.
pub fn log_dir(test: &str) -> PathBuf {
    let d = target_dir().join("test-logs").join(test);
    std::fs::create_dir_all(&d).expect("log dir");
    d
}

/// A running service binary; killed on drop.
pub struct ServiceProc {
    /// The service name.
    pub name: String,
    /// Its HTTP base URL.
    pub url: String,
    child: Child,
}

impl Drop for ServiceProc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl ServiceProc {
    /// Starts `name` with exactly `env` (plus PATH), waits for its
    /// "listening" log line and returns its address. Logs go to `logs/<name>.log`.
    pub async fn start(name: &str, env: &HashMap<String, String>, logs: &std::path::Path) -> Self {
        let mut cmd = Command::new(bin_path(name));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DIALSTACK_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let log_path = logs.join(format!("{name}.log"));
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            let mut file = tokio::fs::File::create(&log_path).await.ok();
            let mut lines = BufReader::new(stdout).lines();
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(f) = file.as_mut() {
                    use tokio::io::AsyncWriteExt;
                    let _ = f.write_all(line.as_bytes()).await;
                    let _ = f.write_all(b"\n").await;
                }
                if line.contains("\"listening\"") {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if let (Some(addr), Some(tx)) = (v["addr"].as_str(), tx.take()) {
                            let _ = tx.send(addr.to_owned());
                        }
                    }
                }
            }
        });
        let err_path = logs.join(format!("{name}.stderr"));
        tokio::spawn(async move {
            let mut buf = String::new();
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                buf.push_str(&line);
                buf.push('\n');
                let _ = tokio::fs::write(&err_path, &buf).await;
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(a)) => a,
            _ => {
                let status = child.try_wait().ok().flatten();
                panic!(
                    "{name} did not report listening within 60 s (exit: {status:?}); see {}",
                    logs.display()
                )
            }
        };
        Self {
            name: name.to_owned(),
            url: format!("http://{addr}"),
            child,
        }
    }

    /// Kills the process with SIGKILL (no drain, nothing flushed) and waits.
    pub async fn kill9(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn stop(mut self) -> Option<i32> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        status.ok().and_then(|s| s.ok()).and_then(|s| s.code())
    }
}

/// How to run the whole suite of binaries.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// The test's name (log folder, namespaces).
    pub test: String,
    /// `DIALSTACK_SIP_TRUNK` of media-processor.
    pub trunk: String,
    /// Events channel URL.
    pub events_url: String,
    /// Commands channel URL.
    pub commands_url: String,
    /// Extra environment of media-processor.
    pub media_env: Vec<(String, String)>,
}

/// The five services as real processes.
pub struct Suite {
    /// user-service.
    pub users: ServiceProc,
    /// task-scheduler.
    pub scheduler: ServiceProc,
    /// storage-service.
    pub storage: ServiceProc,
    /// monitor-service.
    pub monitor: ServiceProc,
    /// media-processor.
    pub media: ServiceProc,
    /// The admin password.
    pub admin_password: String,
    /// media-processor's environment (to start it again).
    pub media_env: HashMap<String, String>,
    /// The test's log folder.
    pub logs: PathBuf,
}

fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Suite {
    /// Starts the five services, each on its own fresh MariaDB database.
    pub async fn start(opts: SuiteOptions) -> Self {
        Self::start_on(opts, &crate::mysql_server()).await
    }

    /// Starts the five services, each on its own fresh database on the
    /// MariaDB server `mysql_server` (`mysql://user@host:port`, e.g. a
    /// private server that the test restarts).
    pub async fn start_on(opts: SuiteOptions, mysql_server: &str) -> Self {
        let logs = log_dir(&opts.test);
        let admin_password = "correct horse battery staple".to_owned();
        let service_password = "service account secret 42".to_owned();
        let common = |db: &str| {
            env_of(&[
                ("DIALSTACK_HTTP_ADDR", "127.0.0.1:0"),
                (
                    "DIALSTACK_DATABASE_URL",
                    &format!("{mysql_server}/{}", crate::unique(&format!("dstest_{db}_"))),
                ),
                ("DIALSTACK_EVENTS_URL", &opts.events_url),
                ("DIALSTACK_COMMANDS_URL", &opts.commands_url),
                ("DIALSTACK_SHUTDOWN_GRACE_SECS", "5"),
            ])
        };
        let mut env = common("users");
        env.insert("DIALSTACK_ADMIN_PASSWORD".into(), admin_password.clone());
        env.insert(
            "DIALSTACK_SERVICE_PASSWORD".into(),
            service_password.clone(),
        );
        let users = ServiceProc::start("user-service", &env, &logs).await;
        let jwks = format!("{}/.well-known/jwks.json", users.url);
        let mut env = common("sched");
        env.insert("DIALSTACK_JWKS_URL".into(), jwks.clone());
        env.insert("DIALSTACK_USER_SERVICE_URL".into(), users.url.clone());
        let scheduler = ServiceProc::start("task-scheduler", &env, &logs).await;
        // storage-service serves what media-processor records: both use the
        // same store (a folder of the test's own unless the test names one).
        let recordings = opts
            .media_env
            .iter()
            .filter(|(k, _)| k == "DIALSTACK_RECORDINGS_URL" || k.starts_with("DIALSTACK_S3_"))
            .cloned()
            .collect::<Vec<_>>();
        let recordings_url = recordings
            .iter()
            .find(|(k, _)| k == "DIALSTACK_RECORDINGS_URL")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| format!("file://{}/recordings", logs.display()));
        let mut env = common("store");
        env.insert("DIALSTACK_JWKS_URL".into(), jwks.clone());
        env.extend(recordings.iter().cloned());
        env.insert("DIALSTACK_RECORDINGS_URL".into(), recordings_url.clone());
        let storage = ServiceProc::start("storage-service", &env, &logs).await;
        let mut env = common("mon");
        env.insert("DIALSTACK_JWKS_URL".into(), jwks.clone());
        let monitor = ServiceProc::start("monitor-service", &env, &logs).await;
        let mut env = common("media");
        for (k, v) in [
            ("DIALSTACK_JWKS_URL", jwks.as_str()),
            ("DIALSTACK_SIP_TRUNK", opts.trunk.as_str()),
            ("DIALSTACK_SIP_ADDR", "127.0.0.1:0"),
            ("DIALSTACK_RTP_PORTS", "0"),
            ("DIALSTACK_SCHEDULER_URL", scheduler.url.as_str()),
            ("DIALSTACK_USER_SERVICE_URL", users.url.as_str()),
            ("DIALSTACK_SERVICE_PASSWORD", service_password.as_str()),
            // SIPp would take an OPTIONS keepalive for a call of its
            // scenario; the keepalive has its own test.
            ("DIALSTACK_SIP_KEEPALIVE_SECS", "0"),
            ("DIALSTACK_RECORDINGS_URL", recordings_url.as_str()),
            (
                "DIALSTACK_RECORDINGS_SPOOL",
                &logs.join(crate::unique("spool-")).display().to_string(),
            ),
            (
                "DIALSTACK_AUDIO_CACHE",
                &logs.join("audio-cache").display().to_string(),
            ),
        ] {
            env.insert(k.into(), v.into());
        }
        env.extend(opts.media_env.iter().cloned());
        let media = ServiceProc::start("media-processor", &env, &logs).await;
        let suite = Self {
            media_env: env,
            logs: logs.clone(),
            users,
            scheduler,
            storage,
            monitor,
            media,
            admin_password,
        };
        suite.wait_ready().await;
        suite
    }

    /// All five services.
    pub fn all(&self) -> [&ServiceProc; 5] {
        [
            &self.users,
            &self.scheduler,
            &self.storage,
            &self.monitor,
            &self.media,
        ]
    }

    /// Waits until every `/health/ready` answers 200.
    pub async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        for s in self.all() {
            let url = format!("{}/health/ready", s.url);
            crate::eventually(
                &format!("{} ready", s.name),
                Duration::from_secs(60),
                || {
                    let http = http.clone();
                    let url = url.clone();
                    async move {
                        let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
                        if r.status().is_success() {
                            Ok(())
                        } else {
                            Err(r.text().await.unwrap_or_default())
                        }
                    }
                },
            )
            .await;
        }
    }

    /// An admin token.
    pub async fn admin_token(&self) -> String {
        login(&self.users.url, "admin", &self.admin_password).await
    }
}

/// Logs in and returns the access token.
pub async fn login(users_url: &str, username: &str, password: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{users_url}/v1/auth/login"))
        .json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await
        .expect("user-service answers");
    assert_eq!(resp.status(), 200, "login failed");
    let body: serde_json::Value = resp.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}

/// A running SIPp.
pub struct Sipp {
    child: Child,
    /// Its SIP port on 127.0.0.1.
    pub port: u16,
    /// The message trace file.
    pub trace: PathBuf,
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Folder of the project's SIPp scenarios.
pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("sipp")
        .join(name)
}

impl Sipp {
    /// Starts SIPp as a UAS on a free port, running `scenario` (`None`: the
    /// built-in `uas` with RTP echo) for `calls` calls.
    pub async fn uas(test: &str, scenario: Option<PathBuf>, calls: u32) -> Self {
        let logs = log_dir(test);
        let port = crate::free_udp_port();
        let media_port = crate::free_udp_port() & !1;
        let trace = logs.join(format!("sipp-{port}-messages.log"));
        let mut cmd = Command::new("sipp");
        match &scenario {
            Some(path) => {
                cmd.arg("-sf").arg(path);
            }
            None => {
                cmd.arg("-sn").arg("uas").arg("-rtp_echo");
            }
        }
        cmd.args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-mp",
            &media_port.to_string(),
        ])
        .args([
            "-m",
            &calls.to_string(),
            "-nostdin",
            "-trace_msg",
            "-message_file",
        ])
        .arg(&trace)
        .arg("-trace_err")
        .arg("-error_file")
        .arg(logs.join(format!("sipp-{port}-errors.log")))
        .current_dir(&logs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start sipp (install sip-tester; scripts/test-env.sh does): {e}")
        });
        // SIPp binds at once; give it a moment before calls arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Self { child, port, trace }
    }

    /// Waits for SIPp to finish its calls; returns its exit code.
    pub async fn wait(&mut self, timeout: Duration) -> i32 {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(s)) => s.code().unwrap_or(-1),
            _ => panic!("sipp did not finish its calls within {timeout:?}"),
        }
    }

    /// How many distinct calls sent SIPp a request starting with `prefix`
    /// (e.g. `"BYE "`); retransmissions count once.
    pub fn received(&self, prefix: &str) -> usize {
        self.received_by(prefix).len()
    }

    /// The Call-IDs of the calls that sent SIPp a request starting with
    /// `prefix`.
    pub fn received_by(&self, prefix: &str) -> std::collections::HashSet<String> {
        let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
        let mut ids = std::collections::HashSet::new();
        for block in text.split("UDP message received") {
            let mut lines = block
                .lines()
                .skip_while(|l| l.trim().is_empty() || l.contains("bytes"));
            if lines.next().is_some_and(|l| l.starts_with(prefix)) {
                if let Some(id) = block.lines().find_map(|l| l.strip_prefix("Call-ID: ")) {
                    ids.insert(id.trim().to_owned());
                }
            }
        }
        ids
    }

    /// For each Call-ID, the Via branches of the INVITEs SIPp received: one
    /// branch per INVITE transaction (retransmissions share it).
    pub fn invite_branches(&self) -> HashMap<String, std::collections::HashSet<String>> {
        let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
        let mut out: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for block in text.split("UDP message received") {
            let mut lines = block
                .lines()
                .skip_while(|l| l.trim().is_empty() || l.contains("bytes"));
            if !lines.next().is_some_and(|l| l.starts_with("INVITE ")) {
                continue;
            }
            let call_id = block.lines().find_map(|l| l.strip_prefix("Call-ID: "));
            let branch = block
                .lines()
                .find(|l| l.starts_with("Via: "))
                .and_then(|l| l.split(";branch=").nth(1))
                .map(|b| b.split(';').next().unwrap_or(b).trim().to_owned());
            if let (Some(id), Some(b)) = (call_id, branch) {
                out.entry(id.trim().to_owned()).or_default().insert(b);
            }
        }
        out
    }

    /// For each number dialled (the user part of the INVITE's request URI),
    /// the Call-IDs of the INVITEs SIPp received for it.
    pub fn calls_by_number(&self) -> HashMap<String, std::collections::HashSet<String>> {
        let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
        let mut out: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for block in text.split("UDP message received") {
            let mut lines = block
                .lines()
                .skip_while(|l| l.trim().is_empty() || l.contains("bytes"));
            let Some(number) = lines
                .next()
                .and_then(|l| l.strip_prefix("INVITE sip:"))
                .and_then(|l| l.split('@').next())
            else {
                continue;
            };
            if let Some(id) = block.lines().find_map(|l| l.strip_prefix("Call-ID: ")) {
                out.entry(number.to_owned())
                    .or_default()
                    .insert(id.trim().to_owned());
            }
        }
        out
    }

    /// Distinct Call-IDs of the INVITEs SIPp received, and the number of
    /// INVITE requests in its trace (retransmissions included).
    pub fn invites(&self) -> (std::collections::HashSet<String>, usize) {
        let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
        let mut ids = std::collections::HashSet::new();
        let mut count = 0;
        for block in text.split("UDP message received") {
            let mut lines = block
                .lines()
                .skip_while(|l| l.trim().is_empty() || l.contains("bytes"));
            if lines.next().is_some_and(|l| l.starts_with("INVITE ")) {
                count += 1;
                if let Some(id) = block.lines().find_map(|l| l.strip_prefix("Call-ID: ")) {
                    ids.insert(id.trim().to_owned());
                }
            }
        }
        (ids, count)
    }
}

/// `dialstack up` on free ports; returns the child and the URL of each service.
pub async fn dialstack_up(
    data: &std::path::Path,
    trunk: &str,
) -> (tokio::process::Child, HashMap<String, String>) {
    let mut child = tokio::process::Command::new(bin_path("dialstack"))
        .arg("up")
        .arg("--ephemeral-ports")
        .arg("--data-dir")
        .arg(data)
        .args(["--trunk", trunk, "--log-format", "json", "--log", "warn"])
        .env_remove("DIALSTACK_ADMIN_PASSWORD")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("dialstack binary");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while urls.len() < 5 {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("dialstack up reports five services within 60 s")
            .unwrap()
            .expect("dialstack up still running");
        if let Some((name, url)) = line.split_once(" listening on ") {
            urls.insert(name.trim().to_owned(), url.trim().to_owned());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, urls)
}
