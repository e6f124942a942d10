//! Schema fuzzing: schemathesis (installed by `scripts/test-env.sh` into the
//! tools' virtual environment) against every service's `/openapi.json` of a
//! running `dialstack up`, once per role with a valid token of that role.
//! Checks: no response is a 5xx, and every response matches the documented
//! schema. The example count is small here (`DIALSTACK_FUZZ_EXAMPLES`,
//! default 3); `scripts/bench-fuzz.sh` runs it longer and reports the count.
//!
//! Server-Sent Events routes are left out of the schema check (their
//! responses never end; their payloads have tests of their own).

use std::path::PathBuf;
use std::time::Duration;

use dialstack_tests::procs::{dialstack_up, login};
use dialstack_tests::unique;
use reqwest::Method;
use serde_json::json;

fn schemathesis() -> PathBuf {
    let tools = std::env::var("DIALSTACK_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/dialstack/tools")
        });
    let p = tools.join("venv/bin/schemathesis");
    assert!(
        p.exists(),
        "schemathesis missing at {} (scripts/test-env.sh installs it)",
        p.display()
    );
    p
}

/// The `N generated, N passed` line of a run's summary.
fn summary(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    lines
        .iter()
        .position(|l| l.trim() == "Test cases:")
        .and_then(|i| lines.get(i + 1))
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| "no summary".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_survives_schema_fuzzing_for_every_role() {
    let tool = schemathesis();
    let examples: u32 = std::env::var("DIALSTACK_FUZZ_EXAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let data = std::env::temp_dir().join(unique("fuzz-up"));
    let (mut up, urls) = dialstack_up(&data, "sim://").await;
    let users = urls["user-service"].clone();
    let admin_password = std::fs::read_to_string(data.join("admin-password")).unwrap();
    let service_password = std::fs::read_to_string(data.join("service-password")).unwrap();
    let admin = login(&users, "admin", admin_password.trim()).await;
    let http = reqwest::Client::new();
    // A supervisor of team east and an agent in it.
    let mut tokens = Vec::new();
    for (name, role, teams) in [
        ("fuzzsup", "supervisor", vec!["east"]),
        ("fuzzagent", "agent", vec![]),
    ] {
        let password = format!("{name} has a long password");
        let (status, body) = dialstack_tests::users::call(
            &http,
            Method::POST,
            &format!("{users}/v1/users"),
            &admin,
            Some(json!({"username": name, "password": password, "role": role, "teams": teams})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        tokens.push((role, login(&users, name, &password).await));
    }
    let resp = http
        .post(format!("{users}/v1/auth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": user_service::SERVICE_ACCOUNT, "client_secret": service_password.trim()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let service: serde_json::Value = resp.json().await.unwrap();
    tokens.push((
        "service",
        service["access_token"].as_str().unwrap().to_owned(),
    ));
    // Admin last: as admin, fuzzing may change or remove the other users.
    tokens.push(("admin", admin.clone()));

    // user-service last: fuzzing it as admin may change passwords and so
    // revoke the tokens the other runs use.
    let order = [
        "task-scheduler",
        "storage-service",
        "monitor-service",
        "media-processor",
        "user-service",
    ];
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for service in order {
        for (role, token) in &tokens {
            let out = tokio::time::timeout(
                Duration::from_secs(240),
                tokio::process::Command::new(&tool)
                    .arg("run")
                    .arg(format!("{}/openapi.json", urls[service]))
                    .args(["--checks", "not_a_server_error,response_schema_conformance"])
                    .args(["--max-examples", &examples.to_string()])
                    .args(["--workers", "1", "--seed", "20261128"])
                    .args(["--exclude-path-regex", "(/stream|/wallboard)$"])
                    .args(["--suppress-health-check", "all"])
                    .arg("-H")
                    .arg(format!("Authorization: Bearer {token}"))
                    .env("NO_COLOR", "1")
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .unwrap_or_else(|_| panic!("schemathesis on {service} as {role} within 240 s"))
            .expect("schemathesis runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            report.push(format!("{service} as {role}: {}", summary(&text)));
            if !out.status.success() {
                failures.push(format!(
                    "{service} as {role}:\n{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    println!("{}", report.join("\n"));
    let _ = up.start_kill();
    let _ = up.wait().await;
    let _ = std::fs::remove_dir_all(&data);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
