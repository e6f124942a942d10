//! Agents on calls, end to end: the five services as their real binaries
//! (MariaDB, RabbitMQ, Kafka), SIPp as the carrier answering every callee,
//! and three SIPp user agents as the agents' phones (auto-answering, RTP
//! echo). A progressive campaign of 30 calls: every answered call is
//! bridged to exactly one agent with RTP flowing on both legs, no agent is
//! ever given two calls at once, and each agent's state cycles
//! `available → reserved → on_call → wrap_up → available`. Then, with every
//! agent paused, one more call is answered with no agent free: it hears the
//! compliance message, ends `abandoned`, and the campaign's abandon ledger
//! counts it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialstack_common::bus::{Channel, Delivery, HandleError, Handler, Subscription, EVENTS};
use dialstack_common::events::CloudEvent;
use dialstack_tests::campaigns::{completed_cdrs, contacts, wait_completed};
use dialstack_tests::procs::{login, scenario, Sipp, Suite, SuiteOptions};
use dialstack_tests::users::call;
use dialstack_tests::{amqp_url, eventually, kafka_url, unique};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// One `agent.state` event: (agent, previous, state, call).
type StateEvent = (String, String, String, Option<String>);

/// Every `agent.state` event, in arrival order.
#[derive(Default)]
struct States(Mutex<Vec<StateEvent>>);

#[async_trait::async_trait]
impl Handler for States {
    async fn handle(&self, d: &Delivery) -> Result<(), HandleError> {
        let ev = CloudEvent::from_slice(&d.payload)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        let s = |k: &str| ev.data[k].as_str().unwrap_or("").to_owned();
        self.0.lock().unwrap().push((
            s("agent_id"),
            s("previous"),
            s("state"),
            ev.data["call_id"].as_str().map(str::to_owned),
        ));
        Ok(())
    }
}

async fn create_campaign(scheduler: &str, token: &str, body: Value) -> String {
    let (status, created) = call(
        &reqwest::Client::new(),
        Method::POST,
        &format!("{scheduler}/v1/campaigns"),
        token,
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

async fn start(scheduler: &str, token: &str, id: &str) {
    let (status, body) = call(
        &reqwest::Client::new(),
        Method::POST,
        &format!("{scheduler}/v1/campaigns/{id}/start"),
        token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// An agent of `team` whose phone is the SIPp at `port`, logged in and
/// available; returns (id, token).
async fn agent(
    http: &reqwest::Client,
    users: &str,
    admin: &str,
    name: &str,
    team: &str,
    port: u16,
) -> (String, String) {
    let password = format!("{name} has a long password");
    let (status, user) = call(
        http,
        Method::POST,
        &format!("{users}/v1/users"),
        admin,
        Some(json!({"username": name, "password": password, "role": "agent"})),
    )
    .await;
    assert_eq!(status, 201, "{user}");
    let id = user["id"].as_str().unwrap().to_owned();
    let (status, body) = call(
        http,
        Method::PUT,
        &format!("{users}/v1/agents/{id}"),
        admin,
        Some(json!({
            "display_name": name,
            "sip_uri": format!("sip:{name}@127.0.0.1:{port}"),
            "teams": [team],
        })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = login(users, name, &password).await;
    let (status, body) = call(
        http,
        Method::POST,
        &format!("{users}/v1/agents/{id}/state"),
        &token,
        Some(json!({"state": "available"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (id, token)
}

fn campaign(name: &str, numbers: Vec<String>) -> Value {
    json!({
        "name": name,
        "caller_id": "+14155550000",
        "team": "east",
        "mode": "progressive",
        "dial_ratio": 1.0,
        "max_concurrent": 10,
        "max_cps": 10.0,
        "talk_time_ms": 1500,
        "contacts": numbers,
        "calling_hours": {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progressive_campaign_bridges_every_answered_call_to_one_agent() {
    let test = "agents_e2e";
    // The carrier: 30 calls of the campaign, the abandoned one and the
    // transferred one.
    let mut carrier = Sipp::uas(test, None, 32).await;
    let mut phones = Vec::new();
    for _ in 0..3 {
        phones.push(Sipp::uas(test, None, 100).await);
    }
    let busy_phone = Sipp::uas(test, Some(scenario("uas_busy.xml")), 5).await;
    let ns = unique("agents");
    let events_url = amqp_url(&ns);
    let bus = Channel::connect(&events_url, EVENTS).await.unwrap();
    let states = Arc::new(States::default());
    let stop = CancellationToken::new();
    let sub = Subscription::new("agents-e2e", &["agent.state"]);
    bus.prepare(&sub).await.unwrap();
    let consumer = {
        let (bus, states, stop) = (bus.clone(), states.clone(), stop.clone());
        tokio::spawn(async move { bus.consume(sub, states, stop).await.unwrap() })
    };
    let suite = Suite::start(SuiteOptions {
        test: test.into(),
        trunk: format!("sip:127.0.0.1:{}", carrier.port),
        events_url: events_url.clone(),
        commands_url: kafka_url(&ns),
        media_env: vec![("DIALSTACK_AGENT_ANSWER_MS".into(), "3000".into())],
    })
    .await;
    let admin = suite.admin_token().await;
    let users = suite.users.url.clone();
    let http = reqwest::Client::new();

    // Wrap-up ends by itself after 1 s in team east.
    let (status, body) = call(
        &http,
        Method::PUT,
        &format!("{users}/v1/teams/east"),
        &admin,
        Some(json!({"wrap_up_timeout_secs": 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Three agents whose phones are the SIPp user agents, logged in and available.
    let mut agents = Vec::new();
    for (i, phone) in phones.iter().enumerate() {
        agents.push(
            agent(
                &http,
                &users,
                &admin,
                &format!("agent{i}"),
                "east",
                phone.port,
            )
            .await,
        );
    }
    // Heartbeats keep them logged in for the whole test.
    let beats = {
        let agents = agents.clone();
        let users = users.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for _ in 0..200 {
                for (id, token) in agents.iter() {
                    let _ = call(
                        &http,
                        Method::POST,
                        &format!("{users}/v1/agents/{id}/heartbeat"),
                        token,
                        None,
                    )
                    .await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    };

    let id = create_campaign(
        &suite.scheduler.url,
        &admin,
        campaign("bridged", contacts(30)),
    )
    .await;
    start(&suite.scheduler.url, &admin, &id).await;
    let view = wait_completed(&suite.scheduler.url, &admin, &id).await;
    assert_eq!(view["progress"]["done"], 30, "{view}");
    let cdrs = completed_cdrs(&suite.storage.url, &admin, &id, 30).await;
    let ids: HashSet<&str> = agents.iter().map(|(id, _)| id.as_str()).collect();
    let mut per_agent: HashMap<String, usize> = HashMap::new();
    for c in &cdrs {
        assert_eq!(c["outcome"], "answered_human", "{c}");
        let agent = c["agent_id"]
            .as_str()
            .unwrap_or_else(|| panic!("not bridged: {c}"));
        assert!(ids.contains(agent), "{c}");
        assert!(
            c["rtp_sent"].as_i64().unwrap() > 0 && c["rtp_received"].as_i64().unwrap() > 0,
            "{c}"
        );
        *per_agent.entry(agent.to_owned()).or_default() += 1;
    }
    assert_eq!(per_agent.values().sum::<usize>(), 30);
    // The agents' phones got exactly the bridged calls, each its own call.
    let invited: usize = phones.iter().map(|p| p.invites().0.len()).sum();
    assert!(invited >= 30, "{invited} agent calls for 30 bridged calls");

    // Each agent: never reserved or on a call twice at once, and each call
    // cycles available → reserved → on_call → wrap_up → available.
    eventually(
        "every agent back to available",
        Duration::from_secs(20),
        || {
            let states = states.clone();
            let ids = ids.clone();
            async move {
                let s = states.0.lock().unwrap();
                let last: HashMap<&str, &str> = s
                    .iter()
                    .map(|(a, _, st, _)| (a.as_str(), st.as_str()))
                    .collect();
                if ids.iter().all(|a| last.get(a) == Some(&"available")) {
                    Ok(())
                } else {
                    Err(format!("{last:?}"))
                }
            }
        },
    )
    .await;
    let s = states.0.lock().unwrap().clone();
    let mut on_calls = 0;
    for agent in &ids {
        let mine: Vec<_> = s.iter().filter(|(a, ..)| a == agent).collect();
        let mut current: Option<&str> = None;
        for (_, prev, state, call_id) in &mine {
            match state.as_str() {
                "reserved" => {
                    assert_eq!(prev, "available", "{agent}: {mine:?}");
                    assert!(
                        current.is_none(),
                        "{agent} reserved while holding {current:?}"
                    );
                    current = call_id.as_deref();
                }
                "on_call" => {
                    assert_eq!(prev, "reserved", "{agent}: {mine:?}");
                    assert_eq!(
                        call_id.as_deref(),
                        current,
                        "{agent}: on_call for another call"
                    );
                    on_calls += 1;
                }
                "wrap_up" => assert_eq!(prev, "on_call", "{agent}: {mine:?}"),
                "available" => current = None,
                _ => {}
            }
        }
    }
    assert_eq!(on_calls, 30, "one on_call per bridged call");

    // No agent in time: team west's one agent has a phone that answers
    // busy, so the one call its campaign places is answered by the callee,
    // the agent's leg fails, no other agent is free within 2 s, and the
    // callee hears the message and is hung up.
    let (west, _) = agent(&http, &users, &admin, "west0", "west", busy_phone.port).await;
    let mut lone = campaign("lonely", vec!["+14155559999".into()]);
    lone["team"] = json!("west");
    let lone_id = create_campaign(&suite.scheduler.url, &admin, lone).await;
    start(&suite.scheduler.url, &admin, &lone_id).await;
    let view = wait_completed(&suite.scheduler.url, &admin, &lone_id).await;
    assert_eq!(
        view["progress"]["outcomes"],
        json!({"abandoned": 1}),
        "{view}"
    );
    let cdr = completed_cdrs(&suite.storage.url, &admin, &lone_id, 1).await;
    assert_eq!(cdr[0]["outcome"], "abandoned");
    // The message was played: about 1.5 s of RTP after the 2 s wait.
    assert!(cdr[0]["rtp_sent"].as_i64().unwrap() >= 75, "{}", cdr[0]);
    let (status, ledger) = call(
        &http,
        Method::GET,
        &format!("{}/v1/campaigns/{lone_id}/abandon", suite.scheduler.url),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{ledger}");
    assert_eq!(ledger["today"]["abandoned"], 1, "{ledger}");
    assert_eq!(
        busy_phone.invites().0.len(),
        1,
        "the west agent was called once"
    );
    let _ = west;

    // A blind transfer through the API. Team north's agent is on a call:
    // another agent's request is refused as if the call did not exist, a
    // bad target is a 400 naming it, and the agent's own request hands the
    // callee to the target; the agent goes to wrap-up while the callee
    // talks on, and the CDR names the target.
    let north_phone = Sipp::uas(test, None, 1).await;
    let desk = Sipp::uas(test, None, 1).await;
    let (north, north_token) =
        agent(&http, &users, &admin, "north0", "north", north_phone.port).await;
    let mut held = campaign("transferred", vec!["+14155559998".into()]);
    held["team"] = json!("north");
    held["talk_time_ms"] = json!(20_000);
    let held_id = create_campaign(&suite.scheduler.url, &admin, held).await;
    start(&suite.scheduler.url, &admin, &held_id).await;
    let call_id = eventually("north0 on a call", Duration::from_secs(60), || {
        let states = states.clone();
        let north = north.clone();
        async move {
            let s = states.0.lock().unwrap();
            s.iter()
                .find(|(a, _, st, _)| *a == north && st == "on_call")
                .and_then(|(.., c)| c.clone())
                .ok_or_else(|| format!("{} events", s.len()))
        }
    })
    .await;
    let url = format!("{}/v1/calls/{call_id}/transfer", suite.scheduler.url);
    let target = format!("sip:desk@127.0.0.1:{}", desk.port);
    let transfer = |token: &str, body: Value| {
        let (http, url, token) = (http.clone(), url.clone(), token.to_owned());
        async move { call(&http, Method::POST, &url, &token, Some(body)).await }
    };
    let (status, body) = transfer(&agents[0].1, json!({"target": target})).await;
    assert_eq!(status, 404, "another agent's call: {body}");
    assert!(body["request_id"].is_string(), "{body}");
    for bad in [
        json!({"target": "tel:+14155550123"}),
        json!({"target": "sip:x@h\r\nX: 1"}),
        json!({}),
    ] {
        let (status, body) = transfer(&north_token, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = transfer(&north_token, json!({"target": target})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "transfer_requested", "{body}");
    eventually(
        "north0 in wrap-up after the transfer",
        Duration::from_secs(15),
        || {
            let states = states.clone();
            let (north, call_id) = (north.clone(), call_id.clone());
            async move {
                let s = states.0.lock().unwrap();
                s.iter()
                    .any(|(a, p, st, c)| {
                        *a == north
                            && p == "on_call"
                            && st == "wrap_up"
                            && c.as_deref() == Some(call_id.as_str())
                    })
                    .then_some(())
                    .ok_or_else(|| "not yet".to_owned())
            }
        },
    )
    .await;
    let view = wait_completed(&suite.scheduler.url, &admin, &held_id).await;
    assert_eq!(
        view["progress"]["outcomes"],
        json!({"answered_human": 1}),
        "{view}"
    );
    let cdr = completed_cdrs(&suite.storage.url, &admin, &held_id, 1)
        .await
        .remove(0);
    assert_eq!(cdr["agent"]["transfer"]["target"], json!(target), "{cdr}");
    assert!(
        cdr["agent"]["transfer"]["talk_ms"].as_i64().unwrap() > 1_000,
        "{cdr}"
    );
    assert!(
        cdr["agent"]["talk_ms"].as_i64().unwrap() < 15_000,
        "the agent left early: {cdr}"
    );
    assert_eq!(desk.invites().0.len(), 1, "the target was called once");
    let (status, body) = transfer(&north_token, json!({"target": target})).await;
    assert_eq!(status, 409, "the call is over: {body}");

    assert_eq!(carrier.wait(Duration::from_secs(60)).await, 0);

    stop.cancel();
    let _ = beats.await;
    let _ = consumer.await;
}
