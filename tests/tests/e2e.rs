//! End to end: the five services as their real binaries, events on RabbitMQ,
//! commands on Kafka, databases on MariaDB, and SIPp as the trunk; then the
//! same through `dialstack up` with the `sim://` trunk; then bad input.

use std::collections::HashMap;
use std::time::Duration;

use dialstack_common::bus::{Channel, OutMessage, EVENTS};
use dialstack_tests::campaigns::{completed_cdrs, start_campaign, wait_completed};
use dialstack_tests::procs::{
    bin_path, dialstack_up, log_dir, login, scenario, Sipp, Suite, SuiteOptions,
};
use dialstack_tests::{amqp_url, eventually, kafka_url, unique};
use serde_json::{json, Value};

/// Sum of `dialstack_calls_total` for the campaign by outcome, from `/metrics`.
async fn calls_metric(monitor: &str, campaign: &str) -> HashMap<String, u64> {
    let text = reqwest::get(format!("{monitor}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("dialstack_calls_total{"))
    {
        if !line.contains(&format!("campaign=\"{campaign}\"")) {
            continue;
        }
        let outcome = line
            .split("outcome=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        let value: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        *out.entry(outcome.to_owned()).or_default() += value;
    }
    out
}

async fn metric_counts(monitor: &str, campaign: &str, outcome: &str, n: u64) {
    eventually(
        "monitor counted every call",
        Duration::from_secs(60),
        || async {
            let m = calls_metric(monitor, campaign).await;
            if m.get(outcome) == Some(&n) && m.values().sum::<u64>() == n {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_answers_fifty_calls() {
    let test = "e2e_sipp_answer";
    let mut sipp = Sipp::uas(test, None, 50).await;
    let ns = unique("e2ea");
    let events_url = amqp_url(&ns);
    let suite = Suite::start(SuiteOptions {
        test: test.into(),
        trunk: format!("sip:127.0.0.1:{}", sipp.port),
        events_url: events_url.clone(),
        commands_url: kafka_url(&ns),
        media_env: vec![],
    })
    .await;
    let token = suite.admin_token().await;

    // A malformed event on the bus is dead-lettered; consumers carry on.
    let events = Channel::connect(&events_url, EVENTS).await.unwrap();
    events
        .publish(&OutMessage {
            id: "garbage-1".into(),
            routing_key: "call.completed".into(),
            key: "x".into(),
            payload: bytes::Bytes::from_static(b"{this is not a cloud event"),
        })
        .await
        .unwrap();

    let id = start_campaign(&suite.scheduler.url, &token, 50, 400).await;
    let view = wait_completed(&suite.scheduler.url, &token, &id).await;
    assert_eq!(view["progress"]["done"], 50);
    assert_eq!(view["progress"]["outcomes"], json!({"answered_human": 50}));

    assert_eq!(
        sipp.wait(Duration::from_secs(60)).await,
        0,
        "sipp saw 50 successful calls"
    );
    let (ids, invites) = sipp.invites();
    // Exactly 50 INVITE transactions (a second dial would bring a new
    // Call-ID); a retransmission of one of them is allowed on a starved machine.
    assert_eq!(ids.len(), 50, "50 distinct calls reached SIPp");
    assert!(invites >= 50, "{invites} INVITE messages");

    let all = completed_cdrs(&suite.storage.url, &token, &id, 50).await;
    for c in &all {
        assert_eq!(c["outcome"], "answered_human", "{c}");
        assert_eq!(c["sip_status"], 200);
        assert!(c["talk_ms"].as_i64().unwrap() >= 350, "{c}");
        assert!(c["rtp_sent"].as_i64().unwrap() > 0, "{c}");
        assert!(
            c["answered_at"].as_i64().is_some() && c["dialed_at"].as_i64().is_some(),
            "{c}"
        );
    }
    let echoed: i64 = all
        .iter()
        .map(|c| c["rtp_received"].as_i64().unwrap_or(0))
        .sum();
    assert!(echoed > 0, "SIPp echoed RTP back to us");
    metric_counts(&suite.monitor.url, &id, "answered_human", 50).await;

    let dead = eventually(
        "garbage dead-lettered by storage-service",
        Duration::from_secs(30),
        || {
            let events = events.clone();
            async move {
                let d = events
                    .dead_letters("storage-service", 10)
                    .await
                    .map_err(|e| e.to_string())?;
                if d.iter().any(|m| m.payload.starts_with(b"{this is not")) {
                    Ok(d.len())
                } else {
                    Err(format!("{} dead", d.len()))
                }
            }
        },
    )
    .await;
    assert_eq!(dead, 1);

    // SIGTERM drains and exits 0.
    for s in [
        suite.media,
        suite.monitor,
        suite.storage,
        suite.scheduler,
        suite.users,
    ] {
        let name = s.name.clone();
        assert_eq!(s.stop().await, Some(0), "{name} exits cleanly on SIGTERM");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_busy_fifty_calls() {
    let test = "e2e_sipp_busy";
    let mut sipp = Sipp::uas(test, Some(scenario("uas_busy.xml")), 50).await;
    let ns = unique("e2eb");
    let suite = Suite::start(SuiteOptions {
        test: test.into(),
        trunk: format!("sip:127.0.0.1:{}", sipp.port),
        events_url: amqp_url(&ns),
        commands_url: kafka_url(&ns),
        media_env: vec![],
    })
    .await;
    let token = suite.admin_token().await;
    let id = start_campaign(&suite.scheduler.url, &token, 50, 400).await;
    let view = wait_completed(&suite.scheduler.url, &token, &id).await;
    assert_eq!(view["progress"]["outcomes"], json!({"busy": 50}));
    assert_eq!(sipp.wait(Duration::from_secs(60)).await, 0);
    let (ids, invites) = sipp.invites();
    assert_eq!(ids.len(), 50);
    assert!(invites >= 50);

    let all = completed_cdrs(&suite.storage.url, &token, &id, 50).await;
    assert!(
        all.iter()
            .all(|c| c["outcome"] == "busy" && c["sip_status"] == 486),
        "all busy"
    );
    metric_counts(&suite.monitor.url, &id, "busy", 50).await;
    let stats: Value = reqwest::Client::new()
        .get(format!("{}/v1/stats?campaign_id={id}", suite.monitor.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["total"], 50);
    // Busy callees are an outcome, not a failure of the system or network.
    assert_eq!(stats["by_outcome"]["busy"], 50);
    assert_eq!(stats["failures"], 0);
    assert_eq!(stats["failure_rate"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialstack_up_with_the_sim_trunk() {
    let data = log_dir("e2e_up").join(unique("data-"));
    let (mut child, urls) = dialstack_up(&data, "sim://?answer=1&ring_ms=20").await;
    let password = std::fs::read_to_string(data.join("admin-password")).unwrap();
    let token = login(&urls["user-service"], "admin", password.trim()).await;
    let id = start_campaign(&urls["task-scheduler"], &token, 50, 200).await;
    let view = wait_completed(&urls["task-scheduler"], &token, &id).await;
    assert_eq!(view["progress"]["outcomes"], json!({"answered_human": 50}));
    let all = completed_cdrs(&urls["storage-service"], &token, &id, 50).await;
    assert!(all
        .iter()
        .all(|c| c["outcome"] == "answered_human" && c["rtp_received"].as_i64().unwrap_or(0) > 0));
    metric_counts(&urls["monitor-service"], &id, "answered_human", 50).await;

    // The demo command against the same suite.
    let out = tokio::process::Command::new(bin_path("dialstack"))
        .arg("demo")
        .args(["--contacts", "20", "--quiet", "--talk-ms", "100"])
        .args([
            "--users-url",
            &urls["user-service"],
            "--scheduler-url",
            &urls["task-scheduler"],
        ])
        .args([
            "--storage-url",
            &urls["storage-service"],
            "--monitor-url",
            &urls["monitor-service"],
        ])
        .args(["--password", password.trim()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("answered_human") && stdout.contains("total                   20"),
        "{stdout}"
    );

    bad_input_is_refused(&urls, &token).await;

    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "dialstack up exits 0 on SIGTERM");
}

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    let header_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.expect("a JSON error envelope");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["request_id"], header_id.as_str(), "{body}");
    body
}

async fn bad_input_is_refused(urls: &HashMap<String, String>, token: &str) {
    let http = reqwest::Client::new();
    let sched = &urls["task-scheduler"];
    let r = http
        .post(format!("{sched}/v1/campaigns"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "invalid_json").await;
    let r = http
        .post(format!("{sched}/v1/campaigns"))
        .bearer_auth(token)
        .json(
            &json!({"name": "x", "caller_id": "+14155550000", "max_concurrent": 1, "max_cps": 1,
                      "contacts": ["+14155550001", "555-0102"]}),
        )
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 400, "invalid_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("contacts[1]"),
        "{body}"
    );
    let r = http
        .get(format!("{sched}/v1/campaigns/no-such-campaign"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found").await;
    let r = http
        .post(format!("{sched}/v1/campaigns/no-such-campaign/start"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found").await;
    // Lease heartbeats and hang-ups: malformed bodies and bounds (admin may
    // call both).
    for (body, status, code, field) in [
        (json!("not an object"), 400, "invalid_json", ""),
        (json!({"attempt_ids": []}), 400, "invalid_json", "claimer"),
        (
            json!({"claimer": "", "attempt_ids": []}),
            400,
            "invalid_request",
            "claimer",
        ),
        (
            json!({"claimer": "mp", "attempt_ids": vec!["a"; 2_001]}),
            400,
            "invalid_request",
            "attempt_ids",
        ),
        (
            json!({"claimer": "mp", "attempt_ids": [""]}),
            400,
            "invalid_request",
            "attempt_ids",
        ),
        (
            json!({"claimer": "mp", "attempt_ids": ["a"], "lease_ms": 5}),
            400,
            "invalid_request",
            "lease_ms",
        ),
        (
            json!({"claimer": "mp", "attempt_ids": ["a"], "extra": 1}),
            400,
            "invalid_json",
            "extra",
        ),
    ] {
        let r = http
            .post(format!("{sched}/v1/attempts/heartbeat"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let got = expect_error(r, status, code).await;
        assert!(
            got["message"].as_str().unwrap_or("").contains(field),
            "{body}: {got}"
        );
    }
    let r = http
        .post(format!("{sched}/v1/attempts/heartbeat"))
        .bearer_auth(token)
        .json(&json!({"claimer": "mp", "attempt_ids": ["no-such-attempt"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let beat = r.json::<Value>().await.unwrap();
    assert_eq!(beat["renewed"], 0);
    assert_eq!(beat["held"], json!([]), "nothing held: {beat}");
    let long = "c".repeat(37);
    for (call, status, code) in [
        (long.as_str(), 400, "invalid_request"),
        ("no-such-call", 404, "not_found"),
    ] {
        let r = http
            .post(format!("{sched}/v1/calls/{call}/hangup"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        expect_error(r, status, code).await;
    }
    for svc in [
        "task-scheduler",
        "storage-service",
        "monitor-service",
        "media-processor",
        "user-service",
    ] {
        let path = match svc {
            "task-scheduler" => "/v1/campaigns/x",
            "storage-service" => "/v1/calls",
            "monitor-service" => "/v1/stats",
            "media-processor" => "/v1/media/status",
            _ => "/v1/users/me",
        };
        let r = http
            .get(format!("{}{path}", urls[svc]))
            .send()
            .await
            .unwrap();
        expect_error(r, 401, "unauthorized").await;
        let forged = dialstack_common::auth::SigningKey::generate().sign(
            &dialstack_common::auth::new_claims(
                "intruder",
                dialstack_common::auth::Role::Admin,
                Duration::from_secs(600),
            ),
        );
        let r = http
            .get(format!("{}{path}", urls[svc]))
            .bearer_auth(forged)
            .send()
            .await
            .unwrap();
        expect_error(r, 401, "unauthorized").await;
        let r = http
            .get(format!("{}{path}", urls[svc]))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success() || r.status() == 404,
            "{svc} accepts a valid token"
        );
    }
    let r = http
        .get(format!("{}/v1/calls?limit=0", urls["storage-service"]))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "invalid_request").await;
    let r = http
        .post(format!("{}/v1/auth/login", urls["user-service"]))
        .json(&json!({"username": "admin", "password": "not the password"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_missing_required_variable_stops_the_daemon_naming_it() {
    let cases = [
        ("user-service", vec![], "DIALSTACK_DATABASE_URL"),
        (
            "task-scheduler",
            vec![("DIALSTACK_DATABASE_URL", "sqlite::memory:")],
            "DIALSTACK_EVENTS_URL",
        ),
        (
            "storage-service",
            vec![
                ("DIALSTACK_DATABASE_URL", "sqlite::memory:"),
                ("DIALSTACK_EVENTS_URL", "memory://"),
                ("DIALSTACK_COMMANDS_URL", "memory://"),
            ],
            "DIALSTACK_JWKS_URL",
        ),
        (
            "media-processor",
            vec![
                ("DIALSTACK_DATABASE_URL", "sqlite::memory:"),
                ("DIALSTACK_EVENTS_URL", "memory://"),
                ("DIALSTACK_COMMANDS_URL", "memory://"),
                ("DIALSTACK_JWKS_URL", "http://127.0.0.1:1/jwks"),
            ],
            "DIALSTACK_SIP_TRUNK",
        ),
        (
            "monitor-service",
            vec![("DIALSTACK_DATABASE_URL", "postgres://nope")],
            "DIALSTACK_DATABASE_URL",
        ),
        (
            "media-processor",
            vec![
                ("DIALSTACK_DATABASE_URL", "sqlite::memory:"),
                ("DIALSTACK_EVENTS_URL", "memory://"),
                ("DIALSTACK_COMMANDS_URL", "memory://"),
                ("DIALSTACK_JWKS_URL", "http://127.0.0.1:1/jwks"),
                ("DIALSTACK_SIP_TRUNK", "sim://"),
                (
                    "DIALSTACK_RECORDINGS_URL",
                    "ftp://recordings.example.net/calls",
                ),
            ],
            "DIALSTACK_RECORDINGS_URL",
        ),
        (
            "storage-service",
            vec![
                ("DIALSTACK_DATABASE_URL", "sqlite::memory:"),
                ("DIALSTACK_EVENTS_URL", "memory://"),
                ("DIALSTACK_COMMANDS_URL", "memory://"),
                ("DIALSTACK_JWKS_URL", "http://127.0.0.1:1/jwks"),
                ("DIALSTACK_RECORDINGS_URL", "s3://"),
            ],
            "DIALSTACK_RECORDINGS_URL",
        ),
    ];
    for (bin, env, var) in cases {
        let out = tokio::process::Command::new(bin_path(bin))
            .env_clear()
            .envs(env)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bin} exits 2");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{bin}: one line: {stderr}");
        assert!(stderr.contains(var), "{bin} names {var}: {stderr}");
    }
}

/// Panels whose metric no service emits yet, each with the reason. A panel
/// leaves this list as soon as its metric exists (the test fails to say so).
const PANELS_WITHOUT_DATA_YET: &[(&str, &str)] = &[
    (
        "Abandon ratio per campaign",
        "dialstack_campaign_abandon_ratio comes with predictive pacing",
    ),
    (
        "Abandon ratio",
        "dialstack_campaign_abandon_ratio comes with predictive pacing",
    ),
    (
        "Alerts firing (monitor-service)",
        "no alert fires in this healthy run (the alerts tests cover firing)",
    ),
    (
        "Campaign alerts firing",
        "no alert fires in this healthy run (the alerts tests cover firing)",
    ),
    (
        "Notifications by channel and result",
        "this run configures no alert channel, so nothing is sent",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    let logs = log_dir("e2e_dashboards");
    let data = logs.join(unique("data-"));
    let (_suite, urls) = dialstack_up(&data, "sim://?answer=0.8&busy=0.2&ring_ms=20").await;
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let prom_port = dialstack_tests::free_tcp_port();
    let targets: Vec<String> = urls
        .values()
        .map(|u| format!("\"{}\"", u.trim_start_matches("http://")))
        .collect();
    let config = logs.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: dialstack\n    static_configs:\n      - targets: [{}]\n",
            repo.join("deploy/prometheus/rules.yml").display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            logs.join(unique("tsdb-")).display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(logs.join("prometheus.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus installed (scripts/test-env.sh installs Debian's prometheus)");

    let password = std::fs::read_to_string(data.join("admin-password")).unwrap();
    let token = login(&urls["user-service"], "admin", password.trim()).await;
    let id = start_campaign(&urls["task-scheduler"], &token, 30, 200).await;
    wait_completed(&urls["task-scheduler"], &token, &id).await;

    let mut panels = Vec::new();
    for file in ["operations.json", "service-health.json", "campaign.json"] {
        let d: Value = serde_json::from_str(
            &std::fs::read_to_string(repo.join("deploy/grafana/dashboards").join(file)).unwrap(),
        )
        .unwrap();
        // Rows have no targets; variables take Grafana's "All" (`.*`).
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                panels.push((
                    p["title"].as_str().unwrap().to_owned(),
                    t["expr"]
                        .as_str()
                        .unwrap()
                        .replace("$campaign", ".*")
                        .replace("$instance", ".*")
                        .replace("$team", ".*"),
                ));
            }
        }
    }
    assert!(panels.len() >= 14, "dashboards have their panels");
    let http = reqwest::Client::new();
    let query = |expr: String| {
        let http = http.clone();
        async move {
            let v: Value = http
                .get(format!("http://127.0.0.1:{prom_port}/api/v1/query"))
                .query(&[("query", expr.as_str())])
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if v["status"] != "success" {
                return Err(format!("query failed: {v}"));
            }
            Ok::<usize, String>(v["data"]["result"].as_array().map(Vec::len).unwrap_or(0))
        }
    };
    for (title, expr) in &panels {
        let exempt = PANELS_WITHOUT_DATA_YET.iter().find(|(t, _)| t == title);
        match exempt {
            None => {
                eventually(
                    &format!("panel {title:?} has data: {expr}"),
                    Duration::from_secs(60),
                    || async {
                        match query(expr.clone()).await? {
                            0 => Err("empty result".into()),
                            n => Ok(n),
                        }
                    },
                )
                .await;
            }
            Some((_, why)) => {
                let n = query(expr.clone()).await.expect("the query parses");
                assert_eq!(
                    n, 0,
                    "panel {title:?} has data now: remove it from PANELS_WITHOUT_DATA_YET ({why})"
                );
            }
        }
    }
}
