//! Two task-scheduler processes on one MariaDB database dial as one: the
//! lease makes one of them the dispatcher, the pace holds at the
//! campaign's `max_cps`, no lead is dialed twice, and when the leader is
//! killed with SIGKILL the other takes over within seconds.

use std::collections::HashMap;
use std::time::Duration;

use dialstack_common::db::Db;
use dialstack_tests::procs::{log_dir, ServiceProc};
use dialstack_tests::{
    amqp_url, eventually, fresh_mysql_url, fresh_sqlite_url, in_process, unique,
};
use serde_json::{json, Value};
use sqlx::Row;

const ADMIN_PASSWORD: &str = "replica test admin password";

async fn scalar(db: &Db, sql: &str) -> i64 {
    sqlx::query(sql).fetch_one(&db.pool).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_pace_together_and_survive_a_leader_kill() {
    let events = amqp_url(&unique("replicas"));
    let users = in_process::<user_service::Application>(&[
        ("DIALSTACK_DATABASE_URL", &fresh_sqlite_url()),
        ("DIALSTACK_EVENTS_URL", &events),
        ("DIALSTACK_ADMIN_PASSWORD", ADMIN_PASSWORD),
    ])
    .await;
    let db_url = fresh_mysql_url();
    let logs = log_dir("scheduler_replicas").join(unique("run-"));
    let start = |host: &'static str| {
        let mut env = HashMap::new();
        for (k, v) in [
            ("DIALSTACK_DATABASE_URL", db_url.clone()),
            ("DIALSTACK_EVENTS_URL", events.clone()),
            (
                "DIALSTACK_COMMANDS_URL",
                format!("memory://{}", unique("cmd")),
            ),
            (
                "DIALSTACK_JWKS_URL",
                format!("{}/.well-known/jwks.json", users.url),
            ),
            ("DIALSTACK_HTTP_ADDR", "127.0.0.1:0".into()),
            ("DIALSTACK_LEADER_LEASE_MS", "1500".into()),
            ("HOSTNAME", host.into()),
        ] {
            env.insert(k.to_owned(), v);
        }
        let dir = logs.join(host);
        std::fs::create_dir_all(&dir).unwrap();
        async move { ServiceProc::start("task-scheduler", &env, &dir).await }
    };
    // The first creates the schema; then the second joins.
    let a = start("replica-a").await;
    let b = start("replica-b").await;
    let token: Value = users
        .http
        .post(format!("{}/v1/auth/login", users.url))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let cps = 20.0;
    let contacts: Vec<String> = (0..3000)
        .map(|i| format!("+1415{:07}", 2_000_000 + i))
        .collect();
    let http = reqwest::Client::new();
    let c: Value = http
        .post(format!("{}/v1/campaigns", b.url))
        .bearer_auth(&token)
        .json(&json!({"name": "replicas", "caller_id": "+14155550000", "max_concurrent": 10000,
                      "max_cps": cps, "contacts": contacts,
                      "calling_hours": {"days": ["mon","tue","wed","thu","fri","sat","sun"], "start": "00:00", "end": "24:00"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = c["id"].as_str().unwrap().to_owned();
    let r = http
        .post(format!("{}/v1/campaigns/{id}/start", a.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let db = Db::connect(&db_url).await.unwrap();
    // Pace over 8 s, after a second of warm-up (the first second's burst).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = dialstack_common::now_ms();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let t1 = dialstack_common::now_ms();
    let n = scalar(
        &db,
        &format!("SELECT COUNT(*) FROM attempts WHERE created_at >= {t0} AND created_at < {t1}"),
    )
    .await;
    let rate = n as f64 * 1000.0 / (t1 - t0) as f64;
    assert!(
        (rate - cps).abs() <= cps * 0.05,
        "two replicas dial {rate:.2}/s for max_cps {cps}"
    );
    // Kill the leader.
    let holder: String = sqlx::query("SELECT holder FROM leases WHERE name = 'dispatcher'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .get(0);
    let (leader, survivor) = if holder.starts_with("replica-a") {
        (a, b)
    } else {
        (b, a)
    };
    let killed_at = dialstack_common::now_ms();
    leader.kill9().await;
    let resumed = eventually(
        "the other replica dials",
        Duration::from_secs(15),
        || async {
            let n = scalar(
                &db,
                &format!(
                    "SELECT COUNT(*) FROM attempts WHERE created_at > {}",
                    killed_at + 200
                ),
            )
            .await;
            if n > 0 {
                Ok(scalar(
                    &db,
                    &format!(
                        "SELECT MIN(created_at) FROM attempts WHERE created_at > {}",
                        killed_at + 200
                    ),
                )
                .await)
            } else {
                Err("no attempt since the kill".into())
            }
        },
    )
    .await;
    let takeover_ms = resumed - killed_at;
    assert!(takeover_ms < 5_000, "takeover took {takeover_ms} ms");
    let new_holder: String = sqlx::query("SELECT holder FROM leases WHERE name = 'dispatcher'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .get(0);
    assert_ne!(new_holder, holder);
    // Pace again under the new leader.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t2 = dialstack_common::now_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t3 = dialstack_common::now_ms();
    let n = scalar(
        &db,
        &format!("SELECT COUNT(*) FROM attempts WHERE created_at >= {t2} AND created_at < {t3}"),
    )
    .await;
    let rate = n as f64 * 1000.0 / (t3 - t2) as f64;
    assert!(
        (rate - cps).abs() <= cps * 0.05,
        "after takeover {rate:.2}/s"
    );
    // Nobody was dialed twice.
    let twice = scalar(&db, "SELECT COUNT(*) FROM (SELECT lead_id FROM attempts GROUP BY lead_id HAVING COUNT(*) > 1) t").await;
    assert_eq!(twice, 0, "leads dialed twice");
    let leads_dialing = scalar(&db, "SELECT COUNT(*) FROM leads WHERE state = 'dialing'").await;
    let attempts = scalar(&db, "SELECT COUNT(*) FROM attempts").await;
    assert_eq!(leads_dialing, attempts, "one attempt per dialed lead");
    drop(survivor);
    eprintln!("takeover after SIGKILL: {takeover_ms} ms; leader was {holder}, now {new_holder}");
}
