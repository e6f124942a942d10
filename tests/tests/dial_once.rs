//! Dial once under failure, with the five real binaries, MariaDB, RabbitMQ,
//! Kafka (tansu) and SIPp as the trunk:
//! - media-processor is killed with SIGKILL in the middle of a 300-call
//!   campaign and started again: the campaign completes, SIPp never sees one
//!   call dialed twice, every attempt has one outcome and one CDR;
//! - media-processor gets SIGTERM with calls ringing and answered: ringing
//!   calls are canceled, answered ones get BYE, every call reports
//!   `call.completed`, and the process exits 0;
//! - media-processor's own database goes away between a claim and the
//!   call's row: the claim's lease is kept while the row waits, and the
//!   calls are placed once it is back.

use std::collections::HashMap;
use std::time::Duration;

use dialstack_common::bus::{Channel, OutMessage, COMMANDS};
use dialstack_common::events::CloudEvent;
use dialstack_tests::campaigns::{cdrs, completed_cdrs, start_campaign_paced, wait_completed};
use dialstack_tests::procs::{scenario, ServiceProc, Sipp, Suite, SuiteOptions};
use dialstack_tests::proxy::Proxy;
use dialstack_tests::{amqp_url, eventually, kafka_url, unique};
use serde_json::{json, Value};

fn outcomes(all: &[Value]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for c in all {
        *out.entry(c["outcome"].as_str().unwrap_or("none").to_owned())
            .or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_media_processor_mid_campaign_dials_no_one_twice() {
    let test = "dial_once_kill9";
    let calls = 300;
    let sipp = Sipp::uas(test, None, calls as u32).await;
    let ns = unique("d1k");
    // Commands over RabbitMQ here: the killed consumer's unacknowledged
    // dials come back when its connection drops. On tansu, the test's Kafka
    // broker, a consumer group never rebalances away from a member killed
    // with SIGKILL (its partitions stay with the dead member; Apache Kafka
    // expires it after session.timeout.ms), so the restarted replica would
    // receive nothing. The SIGTERM test below runs its commands over Kafka.
    let suite = Suite::start(SuiteOptions {
        test: test.into(),
        trunk: format!("sip:127.0.0.1:{}", sipp.port),
        events_url: amqp_url(&ns),
        commands_url: amqp_url(&format!("{ns}c")),
        media_env: vec![("DIALSTACK_LEASE_SECS".into(), "6".into())],
    })
    .await;
    let token = suite.admin_token().await;
    let id = start_campaign_paced(&suite.scheduler.url, &token, calls, 1_500, 30, 30.0).await;

    // Kill it once a fifth of the campaign is done, with calls in flight.
    eventually(
        "a fifth of the calls done",
        Duration::from_secs(120),
        || async {
            let done = cdrs(&suite.storage.url, &token, &id)
                .await
                .iter()
                .filter(|c| c["state"] == "completed")
                .count();
            if done >= calls / 5 {
                Ok(())
            } else {
                Err(format!("{done} done"))
            }
        },
    )
    .await;
    let Suite {
        users,
        scheduler,
        storage,
        monitor,
        media,
        media_env,
        logs,
        ..
    } = suite;
    media.kill9().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart_logs = logs.join("after-kill");
    std::fs::create_dir_all(&restart_logs).unwrap();
    let media = ServiceProc::start("media-processor", &media_env, &restart_logs).await;

    let view = wait_completed(&scheduler.url, &token, &id).await;
    assert_eq!(view["progress"]["done"], calls, "{view}");
    let all = completed_cdrs(&storage.url, &token, &id, calls).await;
    let by_outcome = outcomes(&all);
    let answered = by_outcome.get("answered_human").copied().unwrap_or(0);
    let lost = by_outcome.get("failed").copied().unwrap_or(0);
    assert_eq!(
        answered + lost,
        calls,
        "only answered or lost: {by_outcome:?}"
    );
    for c in all.iter().filter(|c| c["outcome"] == "failed") {
        assert!(
            c["reason"] == "media_lost" || c["reason"] == "dial_lost",
            "{c}"
        );
    }
    // Attempts and CDRs agree, one each.
    let attempts: i64 = view["progress"]["outcomes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(attempts, calls as i64, "{view}");
    let mut ids: Vec<&str> = all.iter().map(|c| c["call_id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), calls, "one CDR per call");

    // SIPp: every call at most one INVITE transaction, and no more calls
    // than attempts.
    let branches = sipp.invite_branches();
    assert!(
        branches.len() <= calls,
        "{} calls reached SIPp",
        branches.len()
    );
    assert!(
        branches.len() >= answered,
        "every answered call reached SIPp"
    );
    for (call_id, b) in &branches {
        assert_eq!(b.len(), 1, "{call_id} was dialed {} times", b.len());
    }
    for s in [media, monitor, storage, scheduler, users] {
        let name = s.name.clone();
        assert_eq!(s.stop().await, Some(0), "{name} exits cleanly");
    }
}

/// media-processor's database is cut right before a few dials arrive, for
/// longer than the claims' 3 s lease and past the reaper's grace: the
/// claims are made (task-scheduler's database is up), the calls' rows
/// cannot be written. The leases are renewed while the rows wait, so the
/// reaper leaves the attempts alone, and once the database is back every
/// call is placed once and answered. (Before, a claimed attempt whose row
/// could not be written was not renewed: the reaper failed it as
/// `media_lost` and its dial, retried after the outage, was refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_call_keeps_its_lease_while_its_row_waits_for_the_database() {
    let test = "dial_once_media_db_away";
    let calls = 3;
    let sipp = Sipp::uas(test, None, calls as u32).await;
    let ns = unique("d1db");
    let server = dialstack_tests::mysql_server();
    let (hostport, upstream) = dialstack_tests::mysql_server_addr().await;
    let proxy = Proxy::start(upstream).await;
    let media_db = format!(
        "{}/{}",
        server.replace(&hostport, &format!("127.0.0.1:{}", proxy.port)),
        unique("dstest_media_")
    );
    let suite = Suite::start(SuiteOptions {
        test: test.into(),
        trunk: format!("sip:127.0.0.1:{}", sipp.port),
        events_url: amqp_url(&ns),
        commands_url: amqp_url(&format!("{ns}c")),
        media_env: vec![
            ("DIALSTACK_LEASE_SECS".into(), "3".into()),
            ("DIALSTACK_DATABASE_URL".into(), media_db),
        ],
    })
    .await;
    let token = suite.admin_token().await;
    proxy.down();
    let away = std::time::Instant::now();
    let id = start_campaign_paced(&suite.scheduler.url, &token, calls, 500, 10, 10.0).await;
    // Claimed while the database is away.
    eventually("the attempts claimed", Duration::from_secs(30), || async {
        let v = dialstack_tests::campaigns::campaign(&suite.scheduler.url, &token, &id).await?;
        if v["progress"]["states"]["claimed"].as_i64() == Some(calls as i64) {
            Ok(())
        } else {
            Err(v["progress"].to_string())
        }
    })
    .await;
    // Well past the lease and the reaper's 20 s grace after its start.
    tokio::time::sleep(Duration::from_secs(25).saturating_sub(away.elapsed())).await;
    let v = dialstack_tests::campaigns::campaign(&suite.scheduler.url, &token, &id)
        .await
        .unwrap();
    assert_eq!(
        v["progress"]["states"]["claimed"].as_i64(),
        Some(calls as i64),
        "the claims held through the outage: {v}"
    );
    proxy.up().await;
    let view = wait_completed(&suite.scheduler.url, &token, &id).await;
    assert_eq!(
        view["progress"]["outcomes"],
        json!({"answered_human": calls}),
        "{view}"
    );
    let branches = sipp.invite_branches();
    assert_eq!(branches.len(), calls, "each call reached SIPp");
    for (call_id, b) in &branches {
        assert_eq!(b.len(), 1, "{call_id} was dialed {} times", b.len());
    }
    let all = completed_cdrs(&suite.storage.url, &token, &id, calls).await;
    assert_eq!(outcomes(&all).get("answered_human"), Some(&calls));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_ringing_calls_and_hangs_up_answered_ones_before_exit() {
    let test = "dial_once_sigterm";
    let sipp = Sipp::uas(test, Some(scenario("uas_ring_or_cancel.xml")), 40).await;
    let ns = unique("d1t");
    let suite = Suite::start(SuiteOptions {
        test: test.into(),
        trunk: format!("sip:127.0.0.1:{}", sipp.port),
        events_url: amqp_url(&ns),
        commands_url: kafka_url(&ns),
        media_env: vec![],
    })
    .await;
    let token = suite.admin_token().await;
    // 5 calls a second, each ringing 1.5 s, then talking for a minute.
    let id = start_campaign_paced(&suite.scheduler.url, &token, 40, 60_000, 40, 5.0).await;
    eventually("a call answered", Duration::from_secs(60), || async {
        let all = cdrs(&suite.storage.url, &token, &id).await;
        if all.iter().any(|c| c["answered_at"].as_i64().is_some()) {
            Ok(())
        } else {
            Err(format!("{} CDRs", all.len()))
        }
    })
    .await;
    let Suite {
        users,
        scheduler,
        storage,
        monitor,
        media,
        ..
    } = suite;
    let started = std::time::Instant::now();
    assert_eq!(
        media.stop().await,
        Some(0),
        "media-processor drains and exits 0"
    );
    let drain = started.elapsed();
    assert!(
        drain < Duration::from_secs(5),
        "within the grace: {drain:?}"
    );

    // Every call SIPp saw has a completed CDR: canceled while ringing, or
    // answered and hung up by us.
    let seen = sipp.invite_branches();
    assert!(!seen.is_empty());
    let all = eventually(
        "every dialed call completed",
        Duration::from_secs(30),
        || async {
            let all = cdrs(&storage.url, &token, &id).await;
            let done: Vec<Value> = all
                .into_iter()
                .filter(|c| seen.contains_key(c["call_id"].as_str().unwrap_or("")))
                .collect();
            if done.len() == seen.len() && done.iter().all(|c| c["state"] == "completed") {
                Ok(done)
            } else {
                Err(format!(
                    "{} CDRs of {} calls: {:?}",
                    done.len(),
                    seen.len(),
                    done.iter()
                        .map(|c| (c["state"].clone(), c["outcome"].clone()))
                        .collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;
    let by_outcome = outcomes(&all);
    assert_eq!(
        by_outcome.get("answered_human").copied().unwrap_or(0)
            + by_outcome.get("canceled").copied().unwrap_or(0),
        seen.len(),
        "{by_outcome:?}"
    );
    assert!(
        by_outcome.get("canceled").copied().unwrap_or(0) >= 1,
        "{by_outcome:?}"
    );
    assert!(
        by_outcome.get("answered_human").copied().unwrap_or(0) >= 1,
        "{by_outcome:?}"
    );
    // SIPp got a BYE for each answered call and a CANCEL for each canceled
    // one (a canceled call whose 200 crossed the CANCEL gets both).
    let byes = sipp.received_by("BYE ");
    let cancels = sipp.received_by("CANCEL ");
    for c in &all {
        let call_id = c["call_id"].as_str().unwrap();
        match c["outcome"].as_str() {
            Some("answered_human") => assert!(byes.contains(call_id), "no BYE: {c}"),
            Some("canceled") => assert!(cancels.contains(call_id), "no CANCEL: {c}"),
            _ => panic!("unexpected outcome: {c}"),
        }
    }
    for s in [monitor, storage, scheduler, users] {
        let name = s.name.clone();
        assert_eq!(s.stop().await, Some(0), "{name} exits cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_over_rest_ends_an_answered_call_with_bye() {
    let test = "dial_once_hangup";
    let sipp = Sipp::uas(test, None, 1).await;
    let ns = unique("d1h");
    let suite = Suite::start(SuiteOptions {
        test: test.into(),
        trunk: format!("sip:127.0.0.1:{}", sipp.port),
        events_url: amqp_url(&ns),
        commands_url: kafka_url(&ns),
        media_env: vec![],
    })
    .await;
    let token = suite.admin_token().await;
    let id = start_campaign_paced(&suite.scheduler.url, &token, 1, 120_000, 1, 1.0).await;
    let call_id = eventually("the call answered", Duration::from_secs(60), || async {
        let all = cdrs(&suite.storage.url, &token, &id).await;
        match all.first() {
            Some(c) if c["answered_at"].as_i64().is_some() => {
                Ok(c["call_id"].as_str().unwrap().to_owned())
            }
            _ => Err(format!("{all:?}")),
        }
    })
    .await;
    let http = reqwest::Client::new();
    let hangup = |call: String| {
        let http = http.clone();
        let url = format!("{}/v1/calls/{call}/hangup", suite.scheduler.url);
        let token = token.clone();
        async move { http.post(url).bearer_auth(token).send().await.unwrap() }
    };
    let r = hangup(call_id.clone()).await;
    assert_eq!(r.status(), 202);
    let view = wait_completed(&suite.scheduler.url, &token, &id).await;
    assert_eq!(view["progress"]["outcomes"]["answered_human"], 1, "{view}");
    let cdr = completed_cdrs(&suite.storage.url, &token, &id, 1)
        .await
        .remove(0);
    assert!(
        cdr["talk_ms"].as_i64().unwrap() < 60_000,
        "ended early: {cdr}"
    );
    assert_eq!(sipp.received("BYE "), 1, "SIPp got our BYE");
    let r = hangup(call_id).await;
    assert_eq!(r.status(), 409, "the call is over");
    let r = hangup("no-such-call".into()).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["request_id"].is_string() && body["code"].is_string(),
        "{body}"
    );

    // A dial that breaks the edge rules (a header injected through the
    // number) is dead-lettered by media-processor and never dialed.
    let commands = Channel::connect(&kafka_url(&ns), COMMANDS).await.unwrap();
    let evil = json!({
        "attempt_id": "a-evil", "call_id": "c-evil", "campaign_id": id,
        "phone": "+14155550101\r\nX-Injected: 1", "caller_id": "+14155550100",
        "talk_time_ms": 1000, "ring_timeout_ms": 15000,
    });
    let ev = CloudEvent::new("test", "dial", "c-evil", &evil);
    commands
        .publish(&OutMessage {
            id: ev.id.clone(),
            routing_key: "dial".into(),
            key: "c-evil".into(),
            payload: ev.to_bytes(),
        })
        .await
        .unwrap();
    eventually(
        "the bad dial dead-lettered",
        Duration::from_secs(30),
        || {
            let commands = commands.clone();
            async move {
                let dead = commands
                    .dead_letters("media-processor", 10)
                    .await
                    .map_err(|e| e.to_string())?;
                if dead
                    .iter()
                    .any(|d| d.payload.windows(6).any(|w| w == b"c-evil"))
                {
                    Ok(())
                } else {
                    Err(format!("{} dead", dead.len()))
                }
            }
        },
    )
    .await;
    assert_eq!(
        sipp.invite_branches().len(),
        1,
        "only the campaign's call reached SIPp"
    );
}

/// Calls this media-processor ended, from its `/metrics`.
async fn calls_completed(media_url: &str) -> u64 {
    let text = reqwest::get(format!("{media_url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("dialstack_media_calls_completed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Two media-processor replicas take dials from one RabbitMQ queue, which
/// hands each message to one of them; a hang-up sent the same way would
/// reach the replica that does not hold the call about half the time. Each
/// hang-up is addressed to the instance that claimed the call: every call
/// of both replicas ends early with our BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangups_reach_the_replica_that_holds_the_call() {
    let test = "dial_once_replica_hangup";
    let calls = 8usize;
    let sipp = Sipp::uas(test, None, calls as u32).await;
    let ns = unique("d1r");
    let suite = Suite::start(SuiteOptions {
        test: test.into(),
        trunk: format!("sip:127.0.0.1:{}", sipp.port),
        events_url: amqp_url(&ns),
        commands_url: amqp_url(&ns),
        media_env: vec![],
    })
    .await;
    let second_logs = suite.logs.join("second-replica");
    std::fs::create_dir_all(&second_logs).unwrap();
    let mut env = suite.media_env.clone();
    env.insert(
        "DIALSTACK_RECORDINGS_SPOOL".into(),
        second_logs.join("spool").display().to_string(),
    );
    let second = ServiceProc::start("media-processor", &env, &second_logs).await;
    let token = suite.admin_token().await;
    // One call every half second: the queue alternates between the two
    // consumers.
    let id = start_campaign_paced(
        &suite.scheduler.url,
        &token,
        calls,
        120_000,
        calls as u32,
        2.0,
    )
    .await;
    let answered = eventually("every call answered", Duration::from_secs(90), || async {
        let all = cdrs(&suite.storage.url, &token, &id).await;
        let up: Vec<String> = all
            .iter()
            .filter(|c| c["answered_at"].as_i64().is_some())
            .map(|c| c["call_id"].as_str().unwrap().to_owned())
            .collect();
        if up.len() == calls {
            Ok(up)
        } else {
            Err(format!("{} of {calls} answered", up.len()))
        }
    })
    .await;
    // Every other call first: a hang-up dealt round-robin like the dials
    // would then miss (the dials alternated between the replicas).
    let order = answered
        .iter()
        .step_by(2)
        .chain(answered.iter().skip(1).step_by(2));
    let http = reqwest::Client::new();
    for call_id in order {
        let r = http
            .post(format!("{}/v1/calls/{call_id}/hangup", suite.scheduler.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{call_id}");
    }
    let view = wait_completed(&suite.scheduler.url, &token, &id).await;
    assert_eq!(
        view["progress"]["outcomes"]["answered_human"], calls,
        "{view}"
    );
    for c in completed_cdrs(&suite.storage.url, &token, &id, calls).await {
        assert!(
            c["talk_ms"].as_i64().unwrap() < 60_000,
            "hung up by us, not by the talk time: {c}"
        );
    }
    assert_eq!(
        sipp.received("BYE "),
        calls,
        "SIPp got our BYE for each call"
    );
    let (first_n, second_n) = (
        calls_completed(&suite.media.url).await,
        calls_completed(&second.url).await,
    );
    assert_eq!(first_n + second_n, calls as u64);
    assert!(
        first_n > 0 && second_n > 0,
        "both replicas held calls: {first_n} and {second_n}"
    );

    // Malformed transfer commands are dead-lettered, not retried or
    // half-applied; a well-formed one for a call no replica holds is
    // dropped with a log line.
    let commands = Channel::connect(&amqp_url(&ns), COMMANDS).await.unwrap();
    for (call_id, data) in [
        (
            "t-bad-target",
            json!({"call_id": "t-bad-target", "target": "tel:+14155550123"}),
        ),
        (
            "t-injected",
            json!({"call_id": "t-injected", "target": "sip:a@h
X-Evil: 1"}),
        ),
        ("t-no-target", json!({"call_id": "t-no-target"})),
        (
            "t-bad-call",
            json!({"call_id": "../etc", "target": "sip:a@h"}),
        ),
        (
            "t-nobody",
            json!({"call_id": "t-nobody", "target": "sip:a@127.0.0.1"}),
        ),
    ] {
        let ev = CloudEvent::new("test", "transfer", call_id, &data);
        commands
            .publish(&OutMessage {
                id: ev.id.clone(),
                routing_key: "hangup".into(),
                key: call_id.into(),
                payload: ev.to_bytes(),
            })
            .await
            .unwrap();
    }
    let dead = eventually(
        "bad transfers dead-lettered",
        Duration::from_secs(30),
        || {
            let commands = commands.clone();
            async move {
                let dead = commands
                    .dead_letters("media-processor", 20)
                    .await
                    .map_err(|e| e.to_string())?;
                let ids: Vec<String> = dead
                    .iter()
                    .filter_map(|d| CloudEvent::from_slice(&d.payload).ok())
                    .map(|e| e.subject.unwrap_or_default())
                    .collect();
                if ids.len() >= 4 {
                    Ok(ids)
                } else {
                    Err(format!("{ids:?}"))
                }
            }
        },
    )
    .await;
    let mut dead = dead;
    dead.sort();
    assert_eq!(
        dead,
        ["t-bad-call", "t-bad-target", "t-injected", "t-no-target"],
        "only the malformed ones"
    );
}
