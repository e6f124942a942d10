//! Faults with nothing lost (issue 15): the five real binaries on a private
//! MariaDB server, events on a private RabbitMQ node, commands on a private
//! tansu broker, SIPp as the trunk, and a 2,000-call campaign. In the middle
//! of it RabbitMQ, then tansu, then MariaDB are stopped (SIGTERM), kept down
//! for 10 s (`DIALSTACK_FAULT_OUTAGE_SECS` to change it) and started again
//! on the same data and port. Then:
//! - the campaign completes, every call answered;
//! - SIPp saw one INVITE transaction per Call-ID and one Call-ID per number:
//!   nobody was called twice;
//! - every lead has exactly one attempt, completed with one outcome; every
//!   attempt has exactly one CDR, with the same call and outcome; the
//!   monitor counted each call once;
//! - after each restart the system recovered within 30 s.
//!
//! Recovery is measured from the moment the dependency answers clients
//! again: *ready* when every service's `/health/ready` answers 200 again,
//! *flowing* when a call dispatched after the restart has completed (the
//! campaign's completed attempts exceed the attempts it had when the
//! dependency came back), so the whole path (scheduler, commands, media,
//! SIP, events) works again.
//!
//! The brokers and the database are the test's own (`dialstack_tests::faults`):
//! the shared ones serve the other tests running at the same time.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use dialstack_tests::campaigns::{
    campaign, completed_cdrs, leads, start_campaign_paced, wait_completed,
};
use dialstack_tests::faults::{MariaDb, RabbitMq, Tansu};
use dialstack_tests::procs::{Sipp, Suite, SuiteOptions};
use dialstack_tests::{eventually, unique};
use serde_json::Value;

const CALLS: usize = 2_000;
/// Short calls at a high rate keep the run to a few minutes.
const TALK_MS: u64 = 300;
const MAX_CONCURRENT: u32 = 60;
const MAX_CPS: f64 = 40.0;
/// How long each dependency stays down: 10 s, or
/// `DIALSTACK_FAULT_OUTAGE_SECS` (10-120; 30 s and more outlast a call's
/// 30 s lease, so an outcome held up by the outage must keep its lease).
fn outage() -> Duration {
    let secs = std::env::var("DIALSTACK_FAULT_OUTAGE_SECS")
        .ok()
        .map(|v| {
            v.parse::<u64>()
                .ok()
                .filter(|s| (10..=120).contains(s))
                .expect("DIALSTACK_FAULT_OUTAGE_SECS must be 10-120")
        })
        .unwrap_or(10);
    Duration::from_secs(secs)
}
/// The recovery the issue asks for.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
/// Calls completed before the first fault and between two faults.
const BETWEEN: i64 = 200;

/// One restart and what it cost.
struct Figure {
    dependency: &'static str,
    /// Calls completed when it was stopped.
    done_at_stop: i64,
    /// From gone (process exited, port closed) to answering again.
    down: Duration,
    /// From answering again to every service ready.
    ready: Duration,
    /// From answering again to a call dispatched after the restart completed.
    flowing: Duration,
}

/// Attempts made so far and attempts completed.
fn attempts(view: &Value) -> (i64, i64) {
    let made = view["progress"]["states"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_i64).sum())
        .unwrap_or(0);
    (made, view["progress"]["done"].as_i64().unwrap_or(0))
}

async fn wait_done(suite: &Suite, token: &str, id: &str, at_least: i64) -> i64 {
    eventually(
        &format!("{at_least} calls completed"),
        Duration::from_secs(120),
        || async {
            let (_, done) = attempts(&campaign(&suite.scheduler.url, token, id).await?);
            if done >= at_least {
                Ok(done)
            } else {
                Err(format!("{done} completed"))
            }
        },
    )
    .await
}

/// How long after `back` every service was ready, and how long until a
/// call dispatched after `back` completed.
async fn recovery(suite: &Suite, token: &str, id: &str, back: Instant) -> (Duration, Duration) {
    let http = reqwest::Client::new();
    let ready = async {
        eventually(
            "every service ready again",
            Duration::from_secs(90),
            || async {
                for s in suite.all() {
                    let r = http
                        .get(format!("{}/health/ready", s.url))
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await
                        .map_err(|e| format!("{}: {e}", s.name))?;
                    if !r.status().is_success() {
                        return Err(format!(
                            "{}: {}",
                            s.name,
                            r.text().await.unwrap_or_default()
                        ));
                    }
                }
                Ok(())
            },
        )
        .await;
        back.elapsed()
    };
    let flowing = async {
        let made = eventually(
            "the scheduler answers again",
            Duration::from_secs(90),
            || async { Ok(attempts(&campaign(&suite.scheduler.url, token, id).await?).0) },
        )
        .await;
        eventually(
            "a call dispatched after the restart completed",
            Duration::from_secs(90),
            || async {
                let (now_made, done) = attempts(&campaign(&suite.scheduler.url, token, id).await?);
                if done > made {
                    Ok(())
                } else {
                    Err(format!(
                        "{done} completed of {now_made} attempts, {made} made when it came back"
                    ))
                }
            },
        )
        .await;
        back.elapsed()
    };
    tokio::join!(ready, flowing)
}

/// Prints every attempt that did not end answered, with what each service
/// logged about it, so a failure in CI says which path lost the call.
async fn explain_lost_calls(suite: &Suite, token: &str, id: &str) {
    let mut logs: Vec<(String, String)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir(&suite.logs) {
        for e in dir.flatten() {
            let path = e.path();
            if let Ok(text) = std::fs::read_to_string(&path) {
                logs.push((e.file_name().to_string_lossy().into_owned(), text));
            }
        }
    }
    logs.sort();
    for lead in leads(&suite.scheduler.url, token, id).await {
        for a in lead["attempts"].as_array().into_iter().flatten() {
            if a["outcome"] == "answered_human" {
                continue;
            }
            eprintln!("not answered: {a}");
            let keys: Vec<&str> = [&a["id"], &a["call_id"]]
                .into_iter()
                .filter_map(Value::as_str)
                .collect();
            for (name, text) in &logs {
                let hits: Vec<&str> = text
                    .lines()
                    .filter(|l| keys.iter().any(|k| l.contains(k)))
                    .take(60)
                    .collect();
                for l in hits {
                    eprintln!("  {name}: {l}");
                }
            }
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_of_rabbitmq_kafka_and_mariadb_mid_campaign_lose_nothing() {
    let test = "faults_restarts";
    let (mut db, mut rabbit, mut kafka) = tokio::join!(
        MariaDb::start(test),
        RabbitMq::start(test),
        Tansu::start(test)
    );
    let sipp = Sipp::uas(test, None, CALLS as u32).await;
    let ns = unique("flt");
    let suite = Suite::start_on(
        SuiteOptions {
            test: test.into(),
            trunk: format!("sip:127.0.0.1:{}", sipp.port),
            events_url: rabbit.url(&ns),
            commands_url: kafka.url(&ns),
            media_env: vec![],
        },
        &db.server_url(),
    )
    .await;
    let token = suite.admin_token().await;
    let started = Instant::now();
    let id = start_campaign_paced(
        &suite.scheduler.url,
        &token,
        CALLS,
        TALK_MS,
        MAX_CONCURRENT,
        MAX_CPS,
    )
    .await;

    let mut figures = Vec::new();
    let mut at = BETWEEN;
    for dependency in ["rabbitmq", "kafka", "mariadb"] {
        let done_at_stop = wait_done(&suite, &token, &id, at).await;
        let (gone, back) = match dependency {
            "rabbitmq" => {
                let before = rabbit.queues().await;
                assert!(
                    before.iter().any(|(_, ty, _)| ty == "quorum"),
                    "the services declared their quorum queues: {before:?}"
                );
                let (gone, back) = rabbit.daemon.restart_after(outage()).await;
                // Every queue, with its type, survived the restart.
                let after = rabbit.queues().await;
                let names = |q: &[(String, String, u64)]| -> HashSet<(String, String)> {
                    q.iter().map(|(n, t, _)| (n.clone(), t.clone())).collect()
                };
                assert!(
                    names(&before).is_subset(&names(&after)),
                    "queues lost in the restart: before {before:?}, after {after:?}"
                );
                eprintln!("rabbitmq queues before the stop {before:?}, after the start {after:?}");
                (gone, back)
            }
            "kafka" => kafka.daemon.restart_after(outage()).await,
            _ => db.daemon.restart_after(outage()).await,
        };
        let (ready, flowing) = recovery(&suite, &token, &id, back).await;
        let figure = Figure {
            dependency,
            done_at_stop,
            down: back - gone,
            ready,
            flowing,
        };
        eprintln!(
            "{dependency}: stopped at {done_at_stop} calls completed, down {}, ready again after {}, a new call completed after {}",
            secs(figure.down),
            secs(ready),
            secs(flowing)
        );
        figures.push(figure);
        let (_, done) = attempts(&campaign(&suite.scheduler.url, &token, &id).await.unwrap());
        at = done + BETWEEN;
    }

    let view = wait_completed(&suite.scheduler.url, &token, &id).await;
    let wall = started.elapsed();
    assert_eq!(view["progress"]["done"], CALLS, "{view}");
    if view["progress"]["outcomes"] != serde_json::json!({"answered_human": CALLS}) {
        explain_lost_calls(&suite, &token, &id).await;
    }
    assert_eq!(
        view["progress"]["outcomes"],
        serde_json::json!({"answered_human": CALLS}),
        "every call answered, none lost: {view}"
    );

    // Every lead: one attempt, completed, with an outcome and a call.
    let leads = leads(&suite.scheduler.url, &token, &id).await;
    assert_eq!(leads.len(), CALLS);
    let mut attempt_of_call: HashMap<String, (String, String)> = HashMap::new();
    for lead in &leads {
        let tried = lead["attempts"].as_array().expect("attempts");
        assert_eq!(tried.len(), 1, "one attempt per lead: {lead}");
        let a = &tried[0];
        assert_eq!(a["state"], "completed", "{lead}");
        let outcome = a["outcome"].as_str().expect("an outcome").to_owned();
        let call_id = a["call_id"].as_str().expect("a call").to_owned();
        assert!(
            attempt_of_call
                .insert(call_id, (a["id"].as_str().unwrap().to_owned(), outcome))
                .is_none(),
            "a call shared by two attempts: {lead}"
        );
    }

    // Every attempt: one CDR, for its call, with its outcome.
    let cdrs = completed_cdrs(&suite.storage.url, &token, &id, CALLS).await;
    let mut cdr_attempts = HashSet::new();
    for c in &cdrs {
        let call_id = c["call_id"].as_str().unwrap();
        let (attempt, outcome) = attempt_of_call
            .get(call_id)
            .unwrap_or_else(|| panic!("a CDR for a call no attempt made: {c}"));
        assert_eq!(c["attempt_id"], attempt.as_str(), "{c}");
        assert_eq!(c["outcome"], outcome.as_str(), "one outcome: {c}");
        assert!(
            cdr_attempts.insert(attempt.clone()),
            "two CDRs for {attempt}"
        );
    }
    assert_eq!(cdr_attempts.len(), CALLS, "one CDR per attempt");

    // The monitor counted each call once.
    let stats: Value = eventually(
        "the monitor counted every call",
        Duration::from_secs(60),
        || async {
            let v: Value = reqwest::Client::new()
                .get(format!("{}/v1/stats?campaign_id={id}", suite.monitor.url))
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if v["total"].as_u64() >= Some(CALLS as u64) {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    assert_eq!(stats["total"], CALLS, "{stats}");
    assert_eq!(stats["by_outcome"]["answered_human"], CALLS, "{stats}");

    // SIPp: each call one INVITE transaction, each number one call, and
    // exactly the calls the attempts made.
    let branches = sipp.invite_branches();
    for (call_id, b) in &branches {
        assert_eq!(b.len(), 1, "{call_id} was dialed {} times", b.len());
    }
    let reached: HashSet<&String> = branches.keys().collect();
    let made: HashSet<&String> = attempt_of_call.keys().collect();
    assert_eq!(reached, made, "the calls SIPp saw are the attempts' calls");
    let by_number = sipp.calls_by_number();
    assert_eq!(by_number.len(), CALLS, "every number dialed");
    for (number, calls) in &by_number {
        assert_eq!(calls.len(), 1, "{number} was called {} times", calls.len());
    }

    eprintln!(
        "faults: {CALLS} calls (talk {TALK_MS} ms, {MAX_CONCURRENT} at once, {MAX_CPS} calls/s) in {}",
        secs(wall)
    );
    eprintln!("| dependency | calls done at stop | down | ready again | new call completed |");
    for f in &figures {
        eprintln!(
            "| {} | {} | {} | {} | {} |",
            f.dependency,
            f.done_at_stop,
            secs(f.down),
            secs(f.ready),
            secs(f.flowing)
        );
    }
    for f in &figures {
        assert!(
            f.down >= outage(),
            "{} was down {:?}, less than the outage asked for",
            f.dependency,
            f.down
        );
        assert!(
            f.ready < RECOVERY_LIMIT && f.flowing < RECOVERY_LIMIT,
            "{} recovered in {:?} (ready) and {:?} (flowing), over {RECOVERY_LIMIT:?}",
            f.dependency,
            f.ready,
            f.flowing
        );
    }

    let Suite {
        users,
        scheduler,
        storage,
        monitor,
        media,
        ..
    } = suite;
    for s in [media, monitor, storage, scheduler, users] {
        let name = s.name.clone();
        assert_eq!(s.stop().await, Some(0), "{name} exits cleanly");
    }
}
