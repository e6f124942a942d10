//! `dialstack demo`: log in, create and start a campaign of generated
//! contacts, show progress live, and print a summary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

/// `dialstack demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// user-service base URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    users_url: String,
    /// task-scheduler base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    scheduler_url: String,
    /// storage-service base URL.
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    storage_url: String,
    /// monitor-service base URL.
    #[arg(long, default_value = "http://127.0.0.1:8083")]
    monitor_url: String,
    /// Admin user.
    #[arg(long, default_value = "admin")]
    username: String,
    /// Admin password (default: `./data/admin-password`, written by `dialstack up`).
    #[arg(long, env = "DIALSTACK_ADMIN_PASSWORD")]
    password: Option<String>,
    /// Contacts to generate.
    #[arg(long, default_value_t = 200)]
    contacts: usize,
    /// Calls per second.
    #[arg(long, default_value_t = 40.0)]
    cps: f64,
    /// Calls at once.
    #[arg(long, default_value_t = 60)]
    concurrent: u32,
    /// Talk time of answered calls (ms).
    #[arg(long, default_value_t = 2000)]
    talk_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// No progress bar (for logs and tests).
    #[arg(long)]
    quiet: bool,
}

impl DemoArgs {
    /// Options for the suite `dialstack up` just started.
    pub fn local(
        users: SocketAddr,
        scheduler: SocketAddr,
        storage: SocketAddr,
        monitor: SocketAddr,
        password: String,
        contacts: usize,
    ) -> Self {
        Self {
            users_url: format!("http://{users}"),
            scheduler_url: format!("http://{scheduler}"),
            storage_url: format!("http://{storage}"),
            monitor_url: format!("http://{monitor}"),
            username: "admin".into(),
            password: Some(password),
            contacts,
            cps: 40.0,
            concurrent: 60,
            talk_ms: 2000,
            timeout_s: 300,
            quiet: false,
        }
    }
}

async fn check(resp: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!(
            "{what} failed with {status}: {}",
            body["message"].as_str().unwrap_or("")
        );
    }
    Ok(body)
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let password = match args.password.clone() {
        Some(p) => p,
        None => std::fs::read_to_string("./data/admin-password")
            .context(
                "no --password and no ./data/admin-password (is `dialstack up` running here?)",
            )?
            .trim()
            .to_owned(),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let login = check(
        http.post(format!("{}/v1/auth/login", args.users_url))
            .json(&json!({"username": args.username, "password": password}))
            .send()
            .await
            .context("cannot reach user-service")?,
        "login",
    )
    .await?;
    let token = login["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let contacts: Vec<String> = (0..args.contacts)
        .map(|i| format!("+1415{:07}", 5_000_000 + i))
        .collect();
    let created = check(
        http.post(format!("{}/v1/campaigns", args.scheduler_url))
            .bearer_auth(&token)
            .json(&json!({
                "name": format!("demo {}", std::process::id()),
                "caller_id": "+14155550100",
                "max_concurrent": args.concurrent,
                "max_cps": args.cps,
                "talk_time_ms": args.talk_ms,
                "contacts": contacts,
                // The simulated trunk rings no one: every hour is a calling hour.
                "calling_hours": {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"},
            }))
            .send()
            .await?,
        "create campaign",
    )
    .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    check(
        http.post(format!("{}/v1/campaigns/{id}/start", args.scheduler_url))
            .bearer_auth(&token)
            .send()
            .await?,
        "start campaign",
    )
    .await?;
    println!(
        "campaign {id}: {} contacts, {} calls/s, {} at once",
        args.contacts, args.cps, args.concurrent
    );

    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.contacts as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let outcomes: BTreeMap<String, i64> = loop {
        let view = check(
            http.get(format!("{}/v1/campaigns/{id}", args.scheduler_url))
                .bearer_auth(&token)
                .send()
                .await?,
            "campaign status",
        )
        .await?;
        let done = view["progress"]["done"].as_i64().unwrap_or(0);
        let outcomes: BTreeMap<String, i64> =
            serde_json::from_value(view["progress"]["outcomes"].clone()).unwrap_or_default();
        bar.set_position(done as u64);
        bar.set_message(
            outcomes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        if view["state"] == "completed" {
            break outcomes;
        }
        if started.elapsed() > Duration::from_secs(args.timeout_s) {
            bar.abandon();
            anyhow::bail!("campaign not finished after {} s", args.timeout_s);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish();
    let elapsed = started.elapsed().as_secs_f64();

    let stats = check(
        http.get(format!("{}/v1/stats", args.monitor_url))
            .bearer_auth(&token)
            .send()
            .await?,
        "stats",
    )
    .await
    .unwrap_or(Value::Null);
    let cdrs = check(
        http.get(format!(
            "{}/v1/calls?campaign_id={id}&limit=500",
            args.storage_url
        ))
        .bearer_auth(&token)
        .send()
        .await?,
        "call records",
    )
    .await
    .map(|v| v["items"].as_array().map(Vec::len).unwrap_or(0))
    .unwrap_or(0);

    let total: i64 = outcomes.values().sum();
    println!();
    println!("{:<18} {:>7} {:>7}", "outcome", "calls", "share");
    println!("{:-<18} {:->7} {:->7}", "", "", "");
    for (k, v) in &outcomes {
        let share = if total > 0 {
            100.0 * *v as f64 / total as f64
        } else {
            0.0
        };
        println!("{k:<18} {v:>7} {share:>6.1}%");
    }
    println!("{:-<18} {:->7} {:->7}", "", "", "");
    println!("{:<18} {total:>7}", "total");
    println!();
    println!(
        "finished in {elapsed:.1} s ({:.1} calls/s)",
        total as f64 / elapsed.max(0.001)
    );
    println!("call records stored (first page): {cdrs}");
    if let Some(rate) = stats["failure_rate"].as_f64() {
        println!(
            "failure rate, last 5 min (failed, or rejected by the network): {:.1}%",
            rate * 100.0
        );
    }
    Ok(())
}
