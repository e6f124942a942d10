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

/// Waits until the campaign is completed and returns its view.
pub async fn wait_completed(scheduler: &str, token: &str, id: &str) -> Value {
    let http = reqwest::Client::new();
    eventually("campaign completed", Duration::from_secs(180), || {
        let http = http.clone();
        async move {
            let v: Value = http
                .get(format!("{scheduler}/v1/campaigns/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if v["state"] == "completed" {
                Ok(v)
            } else {
                Err(v["progress"].to_string())
            }
        }
    })
    .await
}

/// Every CDR of the campaign, following cursors.
pub async fn cdrs(storage: &str, token: &str, id: &str) -> Vec<Value> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{storage}/v1/calls?campaign_id={id}&limit=20");
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
