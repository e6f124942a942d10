//! Campaign helpers over the REST API: create and start a campaign, wait for
//! it to complete, read its CDRs.

use std::time::Duration;

use serde_json::{json, Value};

use crate::eventually;

/// `n` distinct E.164 numbers.
pub fn contacts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("+1415555{:04}", i)).collect()
}

/// Creates and starts a campaign; returns its id.
pub async fn start_campaign(scheduler: &str, token: &str, n: usize, talk_ms: u64) -> String {
    start_campaign_paced(scheduler, token, n, talk_ms, 20, 25.0).await
}

/// Creates and starts a campaign with the given pace; returns its id.
pub async fn start_campaign_paced(
    scheduler: &str,
    token: &str,
    n: usize,
    talk_ms: u64,
    max_concurrent: u32,
    max_cps: f64,
) -> String {
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{scheduler}/v1/campaigns"))
        .bearer_auth(token)
        .json(&json!({
            "name": "e2e",
            "caller_id": "+14155550000",
            "max_concurrent": max_concurrent,
            "max_cps": max_cps,
            "talk_time_ms": talk_ms,
            "contacts": contacts(n),
            // Every hour: tests run at any time of day.
            "calling_hours": {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "draft");
    assert_eq!(created["progress"]["total"], n);
    let resp = http
        .post(format!("{scheduler}/v1/campaigns/{id}/start"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    id
}

/// The campaign's view (state and progress), or why it could not be read.
pub async fn campaign(scheduler: &str, token: &str, id: &str) -> Result<Value, String> {
    let resp = reqwest::Client::new()
        .get(format!("{scheduler}/v1/campaigns/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    resp.json().await.map_err(|e| e.to_string())
}

/// Waits until the campaign is completed and returns its view.
pub async fn wait_completed(scheduler: &str, token: &str, id: &str) -> Value {
    eventually("campaign completed", Duration::from_secs(180), || async {
        let v = campaign(scheduler, token, id).await?;
        if v["state"] == "completed" {
            Ok(v)
        } else {
            Err(v["progress"].to_string())
        }
    })
    .await
}

/// Every item of a paged list (`url` already has a query), following
/// `next_cursor`.
async fn all_pages(url: &str, token: &str) -> Vec<Value> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = url.to_owned();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// Every lead of the campaign with its attempts, following cursors.
pub async fn leads(scheduler: &str, token: &str, id: &str) -> Vec<Value> {
    all_pages(
        &format!("{scheduler}/v1/campaigns/{id}/leads?limit=500"),
        token,
    )
    .await
}

/// Every CDR of the campaign, following cursors.
pub async fn cdrs(storage: &str, token: &str, id: &str) -> Vec<Value> {
    all_pages(
        &format!("{storage}/v1/calls?campaign_id={id}&limit=20"),
        token,
    )
    .await
}

/// CDRs of the campaign once all `n` are completed.
pub async fn completed_cdrs(storage: &str, token: &str, id: &str, n: usize) -> Vec<Value> {
    eventually("all CDRs completed", Duration::from_secs(60), || async {
        let all = cdrs(storage, token, id).await;
        let done = all.iter().filter(|c| c["state"] == "completed").count();
        if all.len() == n && done == n {
            Ok(all)
        } else {
            Err(format!("{} CDRs, {done} completed", all.len()))
        }
    })
    .await
}

/// Publishes `ce` on `ch` (the events channel), keyed by its subject.
pub async fn publish(
    ch: &dialstack_common::bus::Channel,
    ce: &dialstack_common::events::CloudEvent,
) {
    ch.publish(&dialstack_common::bus::OutMessage {
        id: ce.id.clone(),
        routing_key: ce.ty.clone(),
        key: ce.subject.clone().unwrap_or_else(|| ce.id.clone()),
        payload: bytes::Bytes::from(serde_json::to_vec(ce).unwrap()),
    })
    .await
    .unwrap();
}

/// An `agent.state` event as user-service publishes it.
pub fn agent_state(
    agent_id: &str,
    state: &str,
    teams: &[&str],
    at_ms: i64,
    call_id: Option<&str>,
) -> dialstack_common::events::CloudEvent {
    let data = dialstack_contract::AgentStateChanged {
        agent_id: agent_id.to_owned(),
        previous: String::new(),
        state: state.to_owned(),
        pause_code: None,
        reason: "test".into(),
        at_ms,
        teams: teams.iter().map(|t| (*t).to_owned()).collect(),
        call_id: call_id.map(str::to_owned),
    };
    dialstack_common::events::CloudEvent::new(
        "user-service",
        dialstack_contract::types::AGENT_STATE,
        agent_id,
        &data,
    )
}

/// The call of a dial command as the contract's `CallRef`, now.
pub fn call_ref(cmd: &dialstack_contract::DialCommand) -> dialstack_contract::CallRef {
    dialstack_contract::CallRef {
        call_id: cmd.call_id.clone(),
        attempt_id: cmd.attempt_id.clone(),
        campaign_id: cmd.campaign_id.clone(),
        phone: cmd.phone.clone(),
        at_ms: dialstack_common::now_ms(),
        team: cmd.team.clone(),
    }
}

/// `call.dialing`, `call.answered`, `call.bridged` (to `agent`) or
/// `call.completed` (with `outcome`, and `agent` as its agent leg) for the
/// call of `cmd`, as media-processor publishes them.
pub fn call_event(
    cmd: &dialstack_contract::DialCommand,
    ty: &str,
    outcome: Option<dialstack_contract::Outcome>,
    agent: Option<&str>,
) -> dialstack_common::events::CloudEvent {
    use dialstack_contract::*;
    let call = call_ref(cmd);
    let data = match ty {
        types::CALL_DIALING => serde_json::to_value(CallDialing { call }),
        types::CALL_ANSWERED => serde_json::to_value(CallAnswered {
            call,
            ring_ms: 3_000,
        }),
        types::CALL_BRIDGED => serde_json::to_value(CallBridged {
            call,
            agent_id: agent.expect("an agent to bridge to").to_owned(),
            wait_ms: 300,
            agent_ring_ms: 200,
        }),
        types::CALL_COMPLETED => {
            let outcome = outcome.expect("an outcome");
            let answered = matches!(outcome, Outcome::AnsweredHuman | Outcome::Abandoned);
            serde_json::to_value(CallCompleted {
                ring_ms: 3_000,
                talk_ms: if answered { 20_000 } else { 0 },
                agent_id: agent.map(str::to_owned),
                agent: agent.map(|a| {
                    Box::new(AgentLeg {
                        agent_id: a.to_owned(),
                        wait_ms: 300,
                        ring_ms: 200,
                        talk_ms: 20_000,
                        tries: 0,
                        quality: None,
                        transfer: None,
                    })
                }),
                ..CallCompleted::unanswered(call, outcome, None)
            })
        }
        other => panic!("no such call event in these helpers: {other}"),
    }
    .unwrap();
    dialstack_common::events::CloudEvent::new("media-processor", ty, &cmd.call_id, &data)
}

/// Dial commands read from the commands channel by a consumer group of
/// the test's own (declared before anything is dialed, so none is missed).
pub struct DialSink {
    seen: std::sync::Arc<std::sync::Mutex<Vec<dialstack_contract::DialCommand>>>,
    stop: tokio_util::sync::CancellationToken,
}

struct Collect(std::sync::Arc<std::sync::Mutex<Vec<dialstack_contract::DialCommand>>>);

#[async_trait::async_trait]
impl dialstack_common::bus::Handler for Collect {
    async fn handle(
        &self,
        d: &dialstack_common::bus::Delivery,
    ) -> Result<(), dialstack_common::bus::HandleError> {
        let ev = dialstack_common::events::CloudEvent::from_slice(&d.payload)
            .map_err(|e| dialstack_common::bus::HandleError::Permanent(e.to_string()))?;
        if ev.ty == dialstack_contract::types::DIAL {
            let cmd: dialstack_contract::DialCommand = serde_json::from_value(ev.data)
                .map_err(|e| dialstack_common::bus::HandleError::Permanent(e.to_string()))?;
            self.0.lock().unwrap().push(cmd);
        }
        Ok(())
    }
}

impl DialSink {
    /// Subscribes to `dial` on the commands channel at `commands_url`.
    pub async fn start(commands_url: &str) -> Self {
        let ch =
            dialstack_common::bus::Channel::connect(commands_url, dialstack_common::bus::COMMANDS)
                .await
                .expect("commands channel");
        let sub = dialstack_common::bus::Subscription::new(
            "dial-sink",
            &[dialstack_contract::types::DIAL],
        );
        ch.prepare(&sub).await.expect("dial-sink queue");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let handler = std::sync::Arc::new(Collect(seen.clone()));
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = ch.consume(sub, handler, s).await;
        });
        Self { seen, stop }
    }

    /// Every dial command so far, in arrival order.
    pub fn all(&self) -> Vec<dialstack_contract::DialCommand> {
        self.seen.lock().unwrap().clone()
    }

    /// How many so far.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Whether none came.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until exactly `n` came (failing if more do).
    pub async fn wait_for(&self, n: usize) -> Vec<dialstack_contract::DialCommand> {
        eventually(
            &format!("{n} dial commands"),
            Duration::from_secs(20),
            || async {
                let all = self.all();
                assert!(
                    all.len() <= n,
                    "{} dial commands, at most {n} expected",
                    all.len()
                );
                if all.len() == n {
                    Ok(all)
                } else {
                    Err(format!("{} so far", all.len()))
                }
            },
        )
        .await
    }
}

impl Drop for DialSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Events of some types read from the events channel by a consumer group of
/// the test's own (declared at start, so none published after is missed).
pub struct EventSink {
    seen: std::sync::Arc<std::sync::Mutex<Vec<dialstack_common::events::CloudEvent>>>,
    stop: tokio_util::sync::CancellationToken,
}

struct CollectEvents(std::sync::Arc<std::sync::Mutex<Vec<dialstack_common::events::CloudEvent>>>);

#[async_trait::async_trait]
impl dialstack_common::bus::Handler for CollectEvents {
    async fn handle(
        &self,
        d: &dialstack_common::bus::Delivery,
    ) -> Result<(), dialstack_common::bus::HandleError> {
        let ev = dialstack_common::events::CloudEvent::from_slice(&d.payload)
            .map_err(|e| dialstack_common::bus::HandleError::Permanent(e.to_string()))?;
        self.0.lock().unwrap().push(ev);
        Ok(())
    }
}

impl EventSink {
    /// Subscribes as `name` to `types` on the events channel at `events_url`.
    pub async fn start(events_url: &str, name: &str, types: &[&str]) -> Self {
        let ch = dialstack_common::bus::Channel::connect(events_url, dialstack_common::bus::EVENTS)
            .await
            .expect("events channel");
        let sub = dialstack_common::bus::Subscription::new(name, types);
        ch.prepare(&sub).await.expect("event sink queue");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let handler = std::sync::Arc::new(CollectEvents(seen.clone()));
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = ch.consume(sub, handler, s).await;
        });
        Self { seen, stop }
    }

    /// Every event so far, in arrival order.
    pub fn all(&self) -> Vec<dialstack_common::events::CloudEvent> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until an event matching `pick` came; returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        pick: impl Fn(&dialstack_common::events::CloudEvent) -> bool,
    ) -> dialstack_common::events::CloudEvent {
        eventually(what, Duration::from_secs(20), || async {
            self.all()
                .into_iter()
                .find(|e| pick(e))
                .ok_or_else(|| format!("{} events so far", self.all().len()))
        })
        .await
    }
}

impl Drop for EventSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
