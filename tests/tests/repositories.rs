//! Every repository on SQLite and on MariaDB: the same test body runs against
//! a fresh database of each engine.

use dialstack_common::auth::Role;
use dialstack_common::db::{
    inbox_claim, inbox_claim_many, outbox_enqueue, outbox_enqueue_many, BatchWrite, Db,
    GroupCommit, GroupCommitOptions, Migration, OutboxItem, Tx,
};
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, Outcome};
use dialstack_tests::both_databases;
use dialstack_tests::{typed, CallEventData};
use sqlx::Row;

async fn db(url: &str, migrations: &[Migration]) -> Db {
    let db = Db::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    db.migrate(migrations).await.expect("migrations");
    // Running them again is a no-op.
    db.migrate(migrations)
        .await
        .expect("migrations are idempotent");
    db
}

fn event(call: &str, attempt: &str, campaign: &str, outcome: Option<Outcome>) -> CallEventData {
    CallEventData {
        call_id: call.into(),
        attempt_id: attempt.into(),
        campaign_id: campaign.into(),
        phone: "+14155550101".into(),
        at_ms: dialstack_common::now_ms(),
        outcome,
        sip_status: outcome.map(|_| 200),
        talk_ms: outcome.map(|_| 1500),
        ..Default::default()
    }
}

async fn count(db: &Db, sql: &str) -> i64 {
    sqlx::query(sql).fetch_one(&db.pool).await.unwrap().get(0)
}

#[tokio::test]
async fn outbox_rows_exist_only_when_their_transaction_commits_and_inbox_deduplicates() {
    for (engine, url) in both_databases() {
        let db = db(&url, &[]).await;
        let ev = CloudEvent::new("test", "call.completed", "c1", &serde_json::json!({}));
        let mut tx = db.begin().await.unwrap();
        outbox_enqueue(&mut tx, "events", "c1", &ev).await.unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM outbox").await,
            0,
            "{engine}"
        );
        let mut tx = db.begin().await.unwrap();
        outbox_enqueue(&mut tx, "events", "c1", &ev).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").await,
            1,
            "{engine}"
        );

        let mut tx = db.begin().await.unwrap();
        assert!(
            inbox_claim(&mut tx, db.dialect, "a", "e1").await.unwrap(),
            "{engine}"
        );
        assert!(
            !inbox_claim(&mut tx, db.dialect, "a", "e1").await.unwrap(),
            "{engine}"
        );
        assert!(
            inbox_claim(&mut tx, db.dialect, "b", "e1").await.unwrap(),
            "{engine}: another consumer"
        );
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn inbox_claims_a_batch_as_strictly_as_one_at_a_time() {
    for (engine, url) in both_databases() {
        let db = db(&url, &[]).await;
        let mut tx = db.begin().await.unwrap();
        let got = inbox_claim_many(&mut tx, db.dialect, "a", &["e1", "e2", "e1"])
            .await
            .unwrap();
        assert_eq!(
            got,
            [true, true, false],
            "{engine}: repeated within the batch"
        );
        tx.commit().await.unwrap();

        // A redelivered batch, partly seen before.
        let mut tx = db.begin().await.unwrap();
        let got = inbox_claim_many(&mut tx, db.dialect, "a", &["e2", "e3", "e1"])
            .await
            .unwrap();
        assert_eq!(got, [false, true, false], "{engine}: redelivered");
        // One at a time sees what the batch claimed in the same transaction.
        assert!(
            !inbox_claim(&mut tx, db.dialect, "a", "e3").await.unwrap(),
            "{engine}"
        );
        tx.commit().await.unwrap();

        // A batch whose transaction rolls back claims nothing.
        let mut tx = db.begin().await.unwrap();
        let got = inbox_claim_many(&mut tx, db.dialect, "a", &["e4"])
            .await
            .unwrap();
        assert_eq!(got, [true], "{engine}");
        tx.rollback().await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let got = inbox_claim_many(&mut tx, db.dialect, "a", &["e4", "e1"])
            .await
            .unwrap();
        assert_eq!(got, [true, false], "{engine}: after a rollback");
        let got = inbox_claim_many(&mut tx, db.dialect, "b", &["e1"])
            .await
            .unwrap();
        assert_eq!(got, [true], "{engine}: another consumer");
        assert!(inbox_claim_many(&mut tx, db.dialect, "a", &[])
            .await
            .unwrap()
            .is_empty());
        tx.commit().await.unwrap();

        // More ids than one statement takes, half of them seen.
        let ids: Vec<String> = (0..1_200).map(|i| format!("big{i}")).collect();
        let half: Vec<&str> = ids.iter().step_by(2).map(String::as_str).collect();
        let all: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut tx = db.begin().await.unwrap();
        assert!(inbox_claim_many(&mut tx, db.dialect, "a", &half)
            .await
            .unwrap()
            .iter()
            .all(|f| *f));
        tx.commit().await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let got = inbox_claim_many(&mut tx, db.dialect, "a", &all)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(
            got.iter().enumerate().all(|(i, f)| *f == (i % 2 == 1)),
            "{engine}: only the unseen half is new"
        );
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM inbox WHERE consumer = 'a'").await,
            4 + 1_200,
            "{engine}"
        );
    }
}

/// Two transactions claim the same event at once: the batch that loses the
/// race (it looked before the other committed) sees the id taken and claims
/// the rest of its batch.
#[tokio::test]
async fn a_batch_that_loses_a_claim_race_skips_only_that_event() {
    let db = db(&dialstack_tests::fresh_mysql_url(), &[]).await;
    let mut first = db.begin().await.unwrap();
    assert!(inbox_claim(&mut first, db.dialect, "a", "r1")
        .await
        .unwrap());
    let second = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut tx = db.begin().await.unwrap();
            let got = inbox_claim_many(&mut tx, db.dialect, "a", &["r0", "r1", "r2"])
                .await
                .unwrap();
            tx.commit().await.unwrap();
            got
        })
    };
    dialstack_tests::eventually(
        "the batch waits for the first claim",
        std::time::Duration::from_secs(10),
        || async {
            let waiting = count(
                &db,
                "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'",
            )
            .await;
            if waiting > 0 {
                Ok(())
            } else {
                Err("not waiting yet".to_owned())
            }
        },
    )
    .await;
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), [true, false, true]);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM inbox").await, 3);
}

#[tokio::test]
async fn outbox_rows_of_a_batch_commit_with_their_transaction() {
    for (engine, url) in both_databases() {
        let db = db(&url, &[]).await;
        let events: Vec<CloudEvent> = (0..700)
            .map(|i| {
                CloudEvent::new(
                    "test",
                    "call.dialing",
                    format!("c{i}"),
                    &serde_json::json!({"i": i}),
                )
            })
            .collect();
        let keys: Vec<String> = (0..700).map(|i| format!("c{i}")).collect();
        let items: Vec<OutboxItem<'_>> = events
            .iter()
            .zip(&keys)
            .map(|(event, key)| OutboxItem {
                channel: "events",
                key,
                event,
            })
            .collect();
        let mut tx = db.begin().await.unwrap();
        outbox_enqueue_many(&mut tx, &items).await.unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM outbox").await,
            0,
            "{engine}"
        );
        let mut tx = db.begin().await.unwrap();
        outbox_enqueue_many(&mut tx, &items).await.unwrap();
        outbox_enqueue_many(&mut tx, &[]).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND routing_key = 'call.dialing' AND channel = 'events'").await,
            700,
            "{engine}"
        );
        let row = sqlx::query("SELECT msg_key, payload FROM outbox WHERE id = ?")
            .bind(&events[5].id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let key: String = row.get(0);
        // MySQL reports a binary-collated MEDIUMTEXT as bytes.
        let payload: Vec<u8> = row
            .try_get::<String, _>(1)
            .map(String::into_bytes)
            .unwrap_or_else(|_| row.get(1));
        assert_eq!(key, "c5", "{engine}");
        assert_eq!(CloudEvent::from_slice(&payload).unwrap().id, events[5].id);
    }
}

/// Inserts `(key, value)` rows; a negative value fails the write.
struct Pairs {
    batches: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl BatchWrite for Pairs {
    type Op = (String, i64);
    type Out = usize;
    async fn write(&self, tx: &mut Tx, ops: &[(String, i64)]) -> Result<Vec<usize>, sqlx::Error> {
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut out = Vec::new();
        for (k, v) in ops {
            if *v < 0 {
                return Err(sqlx::Error::Protocol("negative".into()));
            }
            sqlx::query("INSERT INTO pairs (k, v) VALUES (?, ?)")
                .bind(k)
                .bind(v)
                .execute(&mut **tx)
                .await?;
            out.push(ops.len());
        }
        Ok(out)
    }
}

#[tokio::test]
async fn group_commit_applies_concurrent_writes_together_and_fails_them_alone() {
    for (engine, url) in both_databases() {
        let db = db(
            &url,
            &[Migration {
                version: 1,
                name: "pairs",
                sql: "CREATE TABLE pairs (k VARCHAR(64) NOT NULL PRIMARY KEY, v BIGINT NOT NULL)",
            }],
        )
        .await;
        let writer = std::sync::Arc::new(Pairs {
            batches: Default::default(),
        });
        struct Shared(std::sync::Arc<Pairs>);
        #[async_trait::async_trait]
        impl BatchWrite for Shared {
            type Op = (String, i64);
            type Out = usize;
            async fn write(
                &self,
                tx: &mut Tx,
                ops: &[(String, i64)],
            ) -> Result<Vec<usize>, sqlx::Error> {
                self.0.write(tx, ops).await
            }
        }
        let gc = GroupCommit::start(
            db.clone(),
            Shared(writer.clone()),
            GroupCommitOptions {
                max_batch: 64,
                workers: 2,
            },
        );
        let n: i64 = 300;
        let results = futures_util::future::join_all((0..n).map(|i| {
            let gc = gc.clone();
            async move {
                // Two bad writes: a negative value and a key written twice.
                let op = match i {
                    17 => ("bad".to_owned(), -1),
                    18 => ("k3".to_owned(), 18),
                    i => (format!("k{i}"), i),
                };
                gc.submit(op).await
            }
        }))
        .await;
        for (i, r) in results.iter().enumerate() {
            match i {
                17 => assert!(r.is_err(), "{engine}: the bad write fails"),
                18 | 3 => {}
                _ => assert!(r.is_ok(), "{engine}: write {i}: {r:?}"),
            }
        }
        assert_eq!(
            results[3].is_ok() as usize + results[18].is_ok() as usize,
            1,
            "{engine}: one of two writes of one key"
        );
        let batches = writer.batches.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM pairs").await,
            n - 2,
            "{engine}: every good write committed"
        );
        // Batches that failed were retried one write at a time; the good
        // ones still took far fewer transactions than writes.
        let ones = results.iter().filter(|r| r.is_ok()).count();
        assert!(
            batches < ones,
            "{engine}: {batches} batches for {ones} writes"
        );
    }
}

mod scheduler {
    use super::*;
    use task_scheduler::db::{Claim, LeadQuery, Repo, MIGRATIONS};
    use task_scheduler::domain::lead::ImportRules;
    use task_scheduler::domain::{ContactInput, NewCampaignRequest};
    use task_scheduler::workers::dispatcher::{dispatch_campaign, DispatcherConfig, ZoneCache};

    fn guard() -> &'static dialstack_dialrules::guard::DestinationGuard {
        static GUARD: std::sync::OnceLock<dialstack_dialrules::guard::DestinationGuard> =
            std::sync::OnceLock::new();
        GUARD.get_or_init(|| {
            dialstack_dialrules::guard::DestinationGuard::from_lists("", "").unwrap()
        })
    }

    /// Every hour of every day: these tests run at any time of day.
    fn all_day() -> dialstack_dialrules::hours::CallingHours {
        serde_json::from_value(serde_json::json!({
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "start": "00:00", "end": "24:00"
        }))
        .unwrap()
    }

    /// Dispatches up to `n` leads of `c` as the dispatcher would; returns
    /// how many dial commands it wrote.
    async fn queue_attempts(repo: &Repo, c: &task_scheduler::db::Campaign, n: u64) -> u64 {
        let cfg = DispatcherConfig {
            max_cps: 1000.0,
            lease_ttl: std::time::Duration::from_secs(5),
            holder: "test".into(),
            guard: std::sync::Arc::new(guard().clone()),
            number_daily_cap: None,
        };
        dispatch_campaign(repo, &cfg, c, n, &mut ZoneCache::default(), None)
            .await
            .unwrap()
            .unwrap()
            .dialed
    }

    async fn campaign(repo: &Repo, n: usize) -> task_scheduler::db::Campaign {
        team_campaign(repo, n, None).await
    }

    /// A campaign of `n` leads; the first is owned by agent `ann`.
    async fn team_campaign(
        repo: &Repo,
        n: usize,
        team: Option<&str>,
    ) -> task_scheduler::db::Campaign {
        let req = NewCampaignRequest {
            name: "repo test".into(),
            caller_id: "+14155550000".into(),
            max_concurrent: 10,
            max_cps: 10.0,
            contacts: (0..n)
                .map(|i| {
                    let phone = format!("+1415555{:04}", i);
                    if i == 0 {
                        ContactInput::Lead {
                            phone,
                            agent_id: Some("ann".into()),
                            first_name: None,
                            last_name: None,
                            external_id: None,
                            fields: Default::default(),
                        }
                    } else {
                        ContactInput::Phone(phone)
                    }
                })
                .collect(),
            talk_time_ms: Some(1000),
            ring_timeout_ms: None,
            team: team.map(str::to_owned),
            record: true,
            recording_retention_days: Some(30),
            cdr_retention_days: None,
            calling_hours: Some(all_day()),
            retry_policy: None,
            priority: None,
            max_attempts: None,
            max_attempts_per_day: None,
            default_region: None,
            mode: None,
            dial_ratio: None,
            abandon_cap_pct: None,
            skills: None,
            abandon_after_ms: None,
            dispositions: None,
            ivr_flow: None,
            amd: None,
            abandon_message: None,
            transcribe: false,
        };
        let c = repo
            .create_campaign(
                &req.validate(&ImportRules {
                    guard: guard(),
                    default_region: None,
                })
                .unwrap(),
            )
            .await
            .unwrap();
        assert!(c.record, "the record flag round-trips");
        assert_eq!(c.recording_retention_days, Some(30));
        c
    }

    #[tokio::test]
    async fn leads_are_scoped_to_their_owner_or_their_campaign_team() {
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            let sales = team_campaign(&repo, 3, Some("sales")).await;
            let support = team_campaign(&repo, 2, Some("support")).await;
            assert_eq!(sales.team.as_deref(), Some("sales"), "{engine}");
            let q = |f: fn(&mut LeadQuery)| {
                let mut q = LeadQuery {
                    limit: 100,
                    ..Default::default()
                };
                f(&mut q);
                q
            };
            let all = repo.leads(&q(|_| {})).await.unwrap();
            assert_eq!(all.len(), 5, "{engine}");
            let ann = repo
                .leads(&q(|q| q.agent_id = Some("ann".into())))
                .await
                .unwrap();
            assert_eq!(ann.len(), 2, "{engine}: ann owns the first lead of each");
            let sales_leads = repo
                .leads(&q(|q| q.teams = Some(vec!["sales".into()])))
                .await
                .unwrap();
            assert_eq!(sales_leads.len(), 3, "{engine}");
            assert!(sales_leads.iter().all(|l| l.campaign_id == sales.id));
            let none = repo.leads(&q(|q| q.teams = Some(vec![]))).await.unwrap();
            assert!(none.is_empty(), "{engine}");
            let one = repo
                .leads(&q(|q| {
                    q.teams = Some(vec!["support".into()]);
                    q.agent_id = Some("ann".into());
                }))
                .await
                .unwrap();
            assert_eq!(one.len(), 1, "{engine}");
            assert_eq!(one[0].campaign_id, support.id, "{engine}");
            assert!(repo.start_campaign(&sales.id, "test").await.unwrap());
            let lead = repo.lead(&sales_leads[0].id).await.unwrap().unwrap();
            assert!(
                lead.attempts.is_empty(),
                "{engine}: attempts open when dialed"
            );
            assert_eq!(lead.state, "pending", "{engine}");
            assert!(repo.lead("no-such-lead").await.unwrap().is_none());
        }
    }

    /// A running campaign of `n` leads, every one queued; with their attempt ids.
    async fn queued_campaign(repo: &Repo, n: usize) -> (task_scheduler::db::Campaign, Vec<String>) {
        let c = campaign(repo, n).await;
        repo.start_campaign(&c.id, "test").await.unwrap();
        let c = repo.campaign(&c.id).await.unwrap().unwrap();
        queue_attempts(repo, &c, n as u64).await;
        let ids = attempt_ids(repo, "queued").await;
        (c, ids)
    }

    async fn attempt_ids(repo: &Repo, state: &str) -> Vec<String> {
        sqlx::query("SELECT id FROM attempts WHERE state = ? ORDER BY created_at, id")
            .bind(state)
            .fetch_all(&repo.db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    #[tokio::test]
    async fn campaigns_start_once_and_queue_dial_commands_within_the_limit() {
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            let c = campaign(&repo, 1200).await;
            assert_eq!(c.state, "draft", "{engine}");
            assert_eq!(repo.progress(&c.id).await.unwrap().total, 1200, "{engine}");
            assert!(
                repo.start_campaign(&c.id, "test").await.unwrap(),
                "{engine}"
            );
            assert!(
                !repo.start_campaign(&c.id, "test").await.unwrap(),
                "{engine}: second start refused"
            );
            assert_eq!(repo.running_campaigns().await.unwrap().len(), 1, "{engine}");
            let c = repo.campaign(&c.id).await.unwrap().unwrap();
            assert_eq!(queue_attempts(&repo, &c, 7).await, 7, "{engine}");
            assert_eq!(repo.in_flight(&c.id).await.unwrap(), 7, "{engine}");
            let dials = count(
                &repo.db,
                "SELECT COUNT(*) FROM outbox WHERE channel = 'commands' AND routing_key = 'dial'",
            )
            .await;
            assert_eq!(dials, 7, "{engine}: one dial command per queued attempt");
            let p = repo.progress(&c.id).await.unwrap();
            assert_eq!(p.leads.get("pending"), Some(&1193), "{engine}");
            assert_eq!(p.leads.get("dialing"), Some(&7), "{engine}");
            assert_eq!(p.states.get("queued"), Some(&7), "{engine}");
            assert!(
                !repo.complete_if_done(&c.id, "test").await.unwrap(),
                "{engine}"
            );
            assert!(repo.campaign("nope").await.unwrap().is_none(), "{engine}");
        }
    }

    #[tokio::test]
    async fn claims_are_compare_and_set_and_idempotent_for_the_holder() {
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            let (c, ids) = queued_campaign(&repo, 2).await;
            let until = dialstack_common::now_ms() + 30_000;
            assert!(
                matches!(
                    repo.claim(&ids[0], "mp-1", until).await.unwrap(),
                    Claim::Granted(_)
                ),
                "{engine}"
            );
            assert!(
                matches!(
                    repo.claim(&ids[0], "mp-1", until).await.unwrap(),
                    Claim::Granted(_)
                ),
                "{engine}: same holder"
            );
            assert_eq!(
                repo.claim(&ids[0], "mp-2", until).await.unwrap(),
                Claim::Taken("claimed".into()),
                "{engine}"
            );
            assert_eq!(
                repo.claim("no-such-attempt", "mp-1", until).await.unwrap(),
                Claim::Unknown,
                "{engine}"
            );
            // A lease that runs out without dialing fails the attempt for good.
            assert!(
                matches!(
                    repo.claim(&ids[1], "mp-1", 1).await.unwrap(),
                    Claim::Granted(_)
                ),
                "{engine}"
            );
            assert_eq!(
                repo.reap_stuck(600_000, 500, "test").await.unwrap(),
                vec![c.id.clone()],
                "{engine}"
            );
            let row = sqlx::query("SELECT state, outcome, reason FROM attempts WHERE id = ?")
                .bind(&ids[1])
                .fetch_one(&repo.db.pool)
                .await
                .unwrap();
            assert_eq!(
                (
                    row.get::<String, _>(0),
                    row.get::<Option<String>, _>(1),
                    row.get::<Option<String>, _>(2)
                ),
                (
                    "completed".into(),
                    Some("failed".into()),
                    Some("media_lost".into())
                ),
                "{engine}"
            );
            assert_eq!(
                queue_attempts(&repo, &c, 10).await,
                0,
                "{engine}: never redialed"
            );
        }
    }

    #[tokio::test]
    async fn heartbeats_keep_live_calls_and_the_reaper_resolves_the_rest() {
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            let (c, ids) = queued_campaign(&repo, 4).await;
            let past = dialstack_common::now_ms() - 1;
            // ids[0]: claimed by mp-1, its lease renewed by a heartbeat.
            // ids[1]: claimed and dialing, lease lapsed (media processor killed).
            // ids[2]: claimed by mp-2; mp-1's heartbeat cannot renew it.
            // ids[3]: still queued (its dial command lost).
            for (id, who) in [(&ids[0], "mp-1"), (&ids[1], "mp-1"), (&ids[2], "mp-2")] {
                assert!(matches!(
                    repo.claim(id, who, past).await.unwrap(),
                    Claim::Granted(_)
                ));
            }
            let dialing = typed(types::CALL_DIALING, &event("call-b", &ids[1], &c.id, None));
            repo.apply_call_event("d-1", &dialing).await.unwrap();
            let until = dialstack_common::now_ms() + 60_000;
            assert_eq!(
                repo.renew_leases(
                    "mp-1",
                    &[ids[0].clone(), ids[2].clone(), "nope".into()],
                    until
                )
                .await
                .unwrap(),
                1,
                "{engine}: only the heartbeat's own claims"
            );
            assert_eq!(repo.renew_leases("mp-1", &[], until).await.unwrap(), 0);
            // What the heartbeat answers as still held: its own open claims.
            let mut held = repo
                .held_leases(
                    "mp-1",
                    &[
                        ids[0].clone(),
                        ids[1].clone(),
                        ids[2].clone(),
                        "nope".into(),
                    ],
                )
                .await
                .unwrap();
            held.sort();
            let mut want = vec![ids[0].clone(), ids[1].clone()];
            want.sort();
            assert_eq!(held, want, "{engine}: mp-1's claimed and dialing");
            assert!(repo.held_leases("mp-1", &[]).await.unwrap().is_empty());
            // The queued one is young: left alone with a long timeout.
            let touched = repo.reap_stuck(600_000, 500, "test").await.unwrap();
            assert_eq!(touched, vec![c.id.clone()], "{engine}");
            let state = |id: String| {
                let repo = repo.clone();
                async move {
                    let r = sqlx::query("SELECT state, outcome, reason FROM attempts WHERE id = ?")
                        .bind(&id)
                        .fetch_one(&repo.db.pool)
                        .await
                        .unwrap();
                    (
                        r.get::<String, _>(0),
                        r.get::<Option<String>, _>(1),
                        r.get::<Option<String>, _>(2),
                    )
                }
            };
            assert_eq!(
                state(ids[0].clone()).await.0,
                "claimed",
                "{engine}: renewed lease kept"
            );
            for id in [&ids[1], &ids[2]] {
                assert_eq!(
                    state(id.clone()).await,
                    (
                        "completed".into(),
                        Some("failed".into()),
                        Some("media_lost".into())
                    ),
                    "{engine}"
                );
            }
            assert_eq!(state(ids[3].clone()).await.0, "queued", "{engine}");
            // A queued attempt older than the timeout: dial_lost.
            assert_eq!(
                repo.reap_stuck(-1, 500, "test").await.unwrap(),
                vec![c.id.clone()]
            );
            assert_eq!(
                state(ids[3].clone()).await,
                (
                    "completed".into(),
                    Some("failed".into()),
                    Some("dial_lost".into())
                ),
                "{engine}"
            );
            // Each resolution left one call.completed in the outbox, typed.
            let rows =
                sqlx::query("SELECT payload FROM outbox WHERE routing_key = 'call.completed'")
                    .fetch_all(&repo.db.pool)
                    .await
                    .unwrap();
            assert_eq!(rows.len(), 3, "{engine}");
            for r in rows {
                let payload = r
                    .try_get::<String, _>(0)
                    .map(String::into_bytes)
                    .or_else(|_| r.try_get::<Vec<u8>, _>(0))
                    .unwrap();
                let ev = CloudEvent::from_slice(&payload).unwrap();
                let Some(dialstack_contract::CallEvent::Completed(done)) =
                    dialstack_contract::CallEvent::parse(&ev.ty, &ev.data).unwrap()
                else {
                    panic!("not a call.completed: {ev:?}");
                };
                assert_eq!(done.outcome, Outcome::Failed);
                assert!(done.reason.is_some());
            }
            // A late heartbeat does not revive a resolved attempt, and a late
            // dial cannot claim one.
            assert_eq!(
                repo.renew_leases("mp-1", &[ids[1].clone()], until)
                    .await
                    .unwrap(),
                0
            );
            assert!(
                repo.held_leases("mp-1", &[ids[1].clone()])
                    .await
                    .unwrap()
                    .is_empty(),
                "{engine}: a resolved attempt is no longer held"
            );
            assert_eq!(
                repo.claim(&ids[3], "mp-1", until).await.unwrap(),
                Claim::Taken("completed".into())
            );
            assert!(
                !repo.complete_if_done(&c.id, "test").await.unwrap(),
                "{engine}: one call still lives"
            );
        }
    }

    #[tokio::test]
    async fn a_hangup_before_the_claim_ends_the_attempt_and_the_claim_is_refused() {
        use task_scheduler::db::{HangupRequest, TransferRequest};
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            let (_, ids) = queued_campaign(&repo, 2).await;
            let call_of = |id: String| {
                let repo = repo.clone();
                async move {
                    sqlx::query("SELECT call_id FROM attempts WHERE id = ?")
                        .bind(&id)
                        .fetch_one(&repo.db.pool)
                        .await
                        .unwrap()
                        .get::<String, _>(0)
                }
            };
            let (queued_call, claimed_call) =
                (call_of(ids[0].clone()).await, call_of(ids[1].clone()).await);
            let until = dialstack_common::now_ms() + 30_000;
            assert!(matches!(
                repo.claim(&ids[1], "mp-1", until).await.unwrap(),
                Claim::Granted(_)
            ));
            let anyone = |_: Option<&String>| true;
            assert_eq!(
                repo.request_hangup(&queued_call, "sup", anyone, "test")
                    .await
                    .unwrap(),
                HangupRequest::Sent
            );
            assert_eq!(
                repo.claim(&ids[0], "mp-1", until).await.unwrap(),
                Claim::Taken("completed".into()),
                "{engine}: nobody dials a call hung up while queued"
            );
            assert_eq!(
                repo.request_hangup(&queued_call, "sup", anyone, "test")
                    .await
                    .unwrap(),
                HangupRequest::Over
            );
            // A claimed call gets a hangup command on the commands channel,
            // addressed to the instance that claimed it.
            assert_eq!(
                repo.request_hangup(&claimed_call, "sup", anyone, "test")
                    .await
                    .unwrap(),
                HangupRequest::Sent
            );
            let commands = count(
                &repo.db,
                "SELECT COUNT(*) FROM outbox WHERE channel = 'commands' AND routing_key = 'hangup.mp-1'",
            )
            .await;
            assert_eq!(commands, 1, "{engine}");
            // A transfer needs an agent on the call; then it goes to the
            // same instance; on a call that is over it is refused.
            let anyone2 = |_: Option<&String>, _: Option<&String>| true;
            assert_eq!(
                repo.request_transfer(&claimed_call, "sip:a@h", "ag", anyone2, "test")
                    .await
                    .unwrap(),
                TransferRequest::NoAgent
            );
            sqlx::query("UPDATE attempts SET agent_id = 'ag' WHERE id = ?")
                .bind(&ids[1])
                .execute(&repo.db.pool)
                .await
                .unwrap();
            assert_eq!(
                repo.request_transfer(
                    &claimed_call,
                    "sip:a@h",
                    "ag",
                    |_, a| a.map(String::as_str) == Some("other"),
                    "test"
                )
                .await
                .unwrap(),
                TransferRequest::NoSuchCall,
                "{engine}: another agent's call"
            );
            assert_eq!(
                repo.request_transfer(&claimed_call, "sip:a@h", "ag", anyone2, "test")
                    .await
                    .unwrap(),
                TransferRequest::Sent
            );
            let transfers = count(
                &repo.db,
                "SELECT COUNT(*) FROM outbox WHERE channel = 'commands' AND routing_key = 'transfer.mp-1'",
            )
            .await;
            assert_eq!(transfers, 1, "{engine}");
            assert_eq!(
                repo.request_transfer(&queued_call, "sip:a@h", "ag", anyone2, "test")
                    .await
                    .unwrap(),
                TransferRequest::Over
            );
            let completed = count(
                &repo.db,
                "SELECT COUNT(*) FROM outbox WHERE routing_key = 'call.completed'",
            )
            .await;
            assert_eq!(completed, 1, "{engine}: the canceled attempt reported");
            // Unknown calls, and calls of a team the caller does not see.
            assert_eq!(
                repo.request_hangup("nope", "sup", anyone, "test")
                    .await
                    .unwrap(),
                HangupRequest::NoSuchCall
            );
            assert_eq!(
                repo.request_hangup(&claimed_call, "sup", |_| false, "test")
                    .await
                    .unwrap(),
                HangupRequest::NoSuchCall
            );
        }
    }

    #[tokio::test]
    async fn call_events_close_attempts_once_and_complete_the_campaign() {
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            let c = campaign(&repo, 1).await;
            repo.start_campaign(&c.id, "test").await.unwrap();
            let c = repo.campaign(&c.id).await.unwrap().unwrap();
            queue_attempts(&repo, &c, 1).await;
            let id = attempt_ids(&repo, "queued").await.remove(0);
            let dialing = event("call-1", &id, &c.id, None);
            assert_eq!(
                repo.apply_call_event("ev-1", &typed(types::CALL_DIALING, &dialing))
                    .await
                    .unwrap(),
                None,
                "{engine}"
            );
            assert_eq!(
                attempt_ids(&repo, "dialing").await,
                vec![id.clone()],
                "{engine}"
            );
            let done = event("call-1", &id, &c.id, Some(Outcome::Busy));
            assert_eq!(
                repo.apply_call_event("ev-2", &typed(types::CALL_COMPLETED, &done))
                    .await
                    .unwrap(),
                Some(c.id.clone()),
                "{engine}"
            );
            assert_eq!(
                repo.apply_call_event("ev-2", &typed(types::CALL_COMPLETED, &done))
                    .await
                    .unwrap(),
                None,
                "{engine}: duplicate"
            );
            let p = repo.progress(&c.id).await.unwrap();
            assert_eq!(
                (p.done, p.outcomes.get("busy").copied()),
                (1, Some(1)),
                "{engine}"
            );
            assert!(
                repo.complete_if_done(&c.id, "test").await.unwrap(),
                "{engine}"
            );
            assert_eq!(
                repo.campaign(&c.id).await.unwrap().unwrap().state,
                "completed",
                "{engine}"
            );
            let states = count(
                &repo.db,
                "SELECT COUNT(*) FROM outbox WHERE routing_key = 'campaign.state'",
            )
            .await;
            assert_eq!(states, 2, "{engine}: running and completed announced");
        }
    }
}

mod storage {
    use super::*;
    use dialstack_contract::{CallEvent, CallRef, RecordingReady};
    use storage_service::db::{Applied, Cdr, CdrQuery, Change, Repo, MIGRATIONS};

    #[tokio::test]
    async fn events_in_any_order_make_one_cdr_that_never_regresses() {
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            let done = event("c1", "a1", "k1", Some(Outcome::AnsweredHuman));
            assert!(
                repo.apply("e3", &typed(types::CALL_COMPLETED, &done))
                    .await
                    .unwrap(),
                "{engine}"
            );
            assert!(
                repo.apply(
                    "e1",
                    &typed(types::CALL_DIALING, &event("c1", "a1", "k1", None))
                )
                .await
                .unwrap(),
                "{engine}"
            );
            assert!(
                repo.apply(
                    "e2",
                    &typed(types::CALL_ANSWERED, &event("c1", "a1", "k1", None))
                )
                .await
                .unwrap(),
                "{engine}"
            );
            assert!(
                !repo
                    .apply(
                        "e2",
                        &typed(types::CALL_ANSWERED, &event("c1", "a1", "k1", None))
                    )
                    .await
                    .unwrap(),
                "{engine}: duplicate"
            );
            let cdr = repo.get("c1").await.unwrap().unwrap();
            assert_eq!(cdr.state, "completed", "{engine}");
            assert_eq!(cdr.outcome.as_deref(), Some("answered_human"), "{engine}");
            assert_eq!(cdr.talk_ms, Some(1500), "{engine}");
            assert!(
                cdr.dialed_at.is_some() && cdr.answered_at.is_some() && cdr.ended_at.is_some(),
                "{engine}"
            );
            assert!(repo.get("nope").await.unwrap().is_none(), "{engine}");
        }
    }

    #[tokio::test]
    async fn a_batch_applies_each_new_event_once_and_a_redelivered_one_nothing() {
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            let dialing = typed(types::CALL_DIALING, &event("c1", "a1", "k1", None));
            let answered = typed(types::CALL_ANSWERED, &event("c1", "a1", "k1", None));
            let done = typed(
                types::CALL_COMPLETED,
                &event("c1", "a1", "k1", Some(Outcome::AnsweredHuman)),
            );
            let other = typed(types::CALL_DIALING, &event("c2", "a2", "k1", None));
            let items = [
                Applied {
                    event_id: "e3",
                    change: Change::Call(&done),
                },
                Applied {
                    event_id: "e1",
                    change: Change::Call(&dialing),
                },
                Applied {
                    event_id: "e4",
                    change: Change::Call(&other),
                },
                Applied {
                    event_id: "e2",
                    change: Change::Call(&answered),
                },
                Applied {
                    event_id: "e1",
                    change: Change::Call(&dialing),
                },
            ];
            let got = repo.apply_batch(&items).await.unwrap();
            assert_eq!(got, [true, true, true, true, false], "{engine}");
            let c1 = repo.get("c1").await.unwrap().unwrap();
            assert_eq!(c1.state, "completed", "{engine}");
            assert_eq!(c1.outcome.as_deref(), Some("answered_human"), "{engine}");
            assert!(c1.dialed_at.is_some() && c1.answered_at.is_some() && c1.ended_at.is_some());
            assert_eq!(
                repo.get("c2").await.unwrap().unwrap().state,
                "dialing",
                "{engine}"
            );
            // The same events applied one at a time make the same CDR.
            for (id, ty, outcome) in [
                ("s3", types::CALL_COMPLETED, Some(Outcome::AnsweredHuman)),
                ("s1", types::CALL_DIALING, None),
                ("s2", types::CALL_ANSWERED, None),
            ] {
                let mut e = event("c9", "a1", "k1", outcome);
                e.at_ms = match ty {
                    types::CALL_COMPLETED => done.call().at_ms,
                    types::CALL_DIALING => dialing.call().at_ms,
                    _ => answered.call().at_ms,
                };
                assert!(repo.apply(id, &typed(ty, &e)).await.unwrap(), "{engine}");
            }
            let c9 = repo.get("c9").await.unwrap().unwrap();
            assert_eq!(
                Cdr {
                    call_id: "c1".into(),
                    ..c9
                },
                c1,
                "{engine}: batch and one at a time agree"
            );

            // The same batch again (redelivered): nothing applied, nothing changed.
            let before = sqlx::query("SELECT updated_at FROM cdrs WHERE call_id = 'c1'")
                .fetch_one(&repo.db.pool)
                .await
                .unwrap()
                .get::<i64, _>(0);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let got = repo.apply_batch(&items).await.unwrap();
            assert_eq!(got, [false; 5], "{engine}: redelivered batch");
            // One at a time agrees with the batch.
            assert!(!repo.apply("e2", &answered).await.unwrap(), "{engine}");
            let after = sqlx::query("SELECT updated_at FROM cdrs WHERE call_id = 'c1'")
                .fetch_one(&repo.db.pool)
                .await
                .unwrap()
                .get::<i64, _>(0);
            assert_eq!(
                before, after,
                "{engine}: a redelivered batch writes nothing"
            );
            assert_eq!(repo.get("c1").await.unwrap().unwrap(), c1, "{engine}");
            assert_eq!(
                count(&repo.db, "SELECT COUNT(*) FROM inbox").await,
                7,
                "{engine}"
            );
        }
    }

    #[tokio::test]
    async fn a_malformed_event_in_a_batch_is_dead_lettered_alone() {
        use dialstack_common::bus::{BatchHandler, Delivery, HandleError};
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            let store = dialstack_common::recordings::RecordingStore::from_url(
                &dialstack_tests::fresh_recordings_url(),
                &dialstack_common::config::Env::from_pairs(Vec::<(String, String)>::new()),
            )
            .unwrap();
            let handler = storage_service::messaging::CallEvents {
                repo: repo.clone(),
                store,
            };
            let delivery = |ty: &str, payload: Vec<u8>| Delivery {
                routing_key: ty.to_owned(),
                key: String::new(),
                payload: payload.into(),
                attempt: 1,
            };
            let envelope = |ty: &str, call: &str| {
                let data = typed(
                    ty,
                    &event(call, &format!("a-{call}"), "k1", Some(Outcome::Busy)),
                );
                CloudEvent::new("media-processor", ty, call, &data.to_value())
            };
            let dialing = envelope(types::CALL_DIALING, "c1");
            let done = envelope(types::CALL_COMPLETED, "c1");
            let other = envelope(types::CALL_DIALING, "c2");
            let mut broken = envelope(types::CALL_COMPLETED, "c3");
            broken.data = serde_json::json!({"call_id": "c3"});
            let batch = vec![
                delivery(types::CALL_DIALING, serde_json::to_vec(&dialing).unwrap()),
                delivery(types::CALL_COMPLETED, b"not json".to_vec()),
                delivery(types::CALL_COMPLETED, serde_json::to_vec(&done).unwrap()),
                delivery(types::CALL_COMPLETED, serde_json::to_vec(&broken).unwrap()),
                delivery(types::CALL_DIALING, serde_json::to_vec(&other).unwrap()),
            ];
            let results = handler.handle_batch(&batch).await;
            assert_eq!(results.len(), 5, "{engine}");
            for (i, r) in results.iter().enumerate() {
                match i {
                    1 | 3 => assert!(
                        matches!(r, Err(HandleError::Permanent(_))),
                        "{engine}: {i} is dead-lettered: {r:?}"
                    ),
                    _ => assert!(r.is_ok(), "{engine}: {i} applied: {r:?}"),
                }
            }
            assert_eq!(
                repo.get("c1").await.unwrap().unwrap().outcome.as_deref(),
                Some("busy")
            );
            assert_eq!(repo.get("c2").await.unwrap().unwrap().state, "dialing");
            assert!(repo.get("c3").await.unwrap().is_none(), "{engine}");
            // Redelivered as a whole: the valid ones are acknowledged again
            // without a second write.
            let again = handler.handle_batch(&batch).await;
            assert!(
                again[0].is_ok() && again[2].is_ok() && again[4].is_ok(),
                "{engine}"
            );
            assert_eq!(
                count(&repo.db, "SELECT COUNT(*) FROM inbox").await,
                3,
                "{engine}"
            );
            assert_eq!(
                count(&repo.db, "SELECT COUNT(*) FROM cdrs").await,
                2,
                "{engine}"
            );
        }
    }

    #[tokio::test]
    async fn listing_filters_and_pages_without_gaps() {
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            for i in 0..5 {
                let outcome = if i % 2 == 0 {
                    Outcome::Busy
                } else {
                    Outcome::AnsweredHuman
                };
                let call = format!("call-{i}");
                repo.apply(
                    &format!("e{i}"),
                    &typed(
                        types::CALL_COMPLETED,
                        &event(&call, "a", "k1", Some(outcome)),
                    ),
                )
                .await
                .unwrap();
            }
            repo.apply(
                "other",
                &typed(
                    types::CALL_COMPLETED,
                    &event("call-x", "a", "k2", Some(Outcome::Busy)),
                ),
            )
            .await
            .unwrap();
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = repo
                    .list(&CdrQuery {
                        campaign_id: Some("k1".into()),
                        outcome: None,
                        after: after.clone(),
                        limit: 2,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                if page.is_empty() {
                    break;
                }
                after = page.last().map(storage_service::db::CdrCursor::after);
                seen.extend(page.into_iter().map(|c| c.call_id));
            }
            assert_eq!(
                seen,
                (0..5).map(|i| format!("call-{i}")).collect::<Vec<_>>(),
                "{engine}"
            );
            let busy = repo
                .list(&CdrQuery {
                    campaign_id: Some("k1".into()),
                    outcome: Some("busy".into()),
                    after: None,
                    limit: 50,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(busy.len(), 3, "{engine}");
        }
    }

    #[tokio::test]
    async fn listing_is_scoped_to_an_agent_or_to_teams() {
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            let calls = [
                ("c-ann", Some("sales"), Some("ann")),
                ("c-bob", Some("sales"), Some("bob")),
                ("c-sup", Some("support"), Some("cid")),
                ("c-none", None, None),
            ];
            for (call, team, agent) in calls {
                // The team arrives with the first event, the agent later.
                let first = CallEventData {
                    team: team.map(str::to_owned),
                    ..event(call, "a", "k1", None)
                };
                repo.apply(&format!("{call}-1"), &typed(types::CALL_DIALING, &first))
                    .await
                    .unwrap();
                let last = CallEventData {
                    agent_id: agent.map(str::to_owned),
                    ..event(call, "a", "k1", Some(Outcome::AnsweredHuman))
                };
                repo.apply(&format!("{call}-2"), &typed(types::CALL_COMPLETED, &last))
                    .await
                    .unwrap();
            }
            let ids = |q: CdrQuery| {
                let repo = repo.clone();
                async move {
                    let q = CdrQuery { limit: 50, ..q };
                    let page = repo.list(&q).await.unwrap();
                    page.into_iter().map(|c| c.call_id).collect::<Vec<_>>()
                }
            };
            let ann = ids(CdrQuery {
                only_agent: Some("ann".into()),
                ..Default::default()
            })
            .await;
            assert_eq!(ann, ["c-ann"], "{engine}");
            let sales = ids(CdrQuery {
                only_teams: Some(vec!["sales".into()]),
                ..Default::default()
            })
            .await;
            assert_eq!(sales, ["c-ann", "c-bob"], "{engine}");
            let both = ids(CdrQuery {
                only_teams: Some(vec!["sales".into(), "support".into()]),
                ..Default::default()
            })
            .await;
            assert_eq!(both.len(), 3, "{engine}");
            let no_team = ids(CdrQuery {
                only_teams: Some(vec![]),
                ..Default::default()
            })
            .await;
            assert!(
                no_team.is_empty(),
                "{engine}: a supervisor of no team sees nothing"
            );
            let all = ids(CdrQuery::default()).await;
            assert_eq!(all.len(), 4, "{engine}");
            let one = repo.get("c-ann").await.unwrap().unwrap();
            assert_eq!(one.team.as_deref(), Some("sales"), "{engine}");
            assert_eq!(one.agent_id.as_deref(), Some("ann"), "{engine}");
        }
    }

    fn quality(mos: f64) -> dialstack_contract::Quality {
        dialstack_contract::Quality {
            packets_received: 1500,
            packets_lost: 3,
            packets_late: 1,
            jitter_ms_mean: 2.5,
            jitter_ms_max: 9.0,
            jitter_buffer_ms: 40.0,
            concealed_ms: 60,
            rtt_ms: Some(12.0),
            r_factor: 80.0,
            mos,
            ..Default::default()
        }
    }

    fn completed_with(call: &str, q: Option<dialstack_contract::Quality>) -> CallEvent {
        let mut ev = typed(
            types::CALL_COMPLETED,
            &event(call, "a1", "k1", Some(Outcome::AnsweredHuman)),
        );
        if let CallEvent::Completed(c) = &mut ev {
            c.quality = q;
        }
        ev
    }

    fn ready(call: &str, retention_days: Option<u32>) -> RecordingReady {
        RecordingReady {
            call: CallRef {
                call_id: call.into(),
                attempt_id: "a1".into(),
                campaign_id: "k1".into(),
                phone: "+14155550101".into(),
                at_ms: dialstack_common::now_ms(),
                team: None,
            },
            url: format!("file:///srv/recordings/k1/{call}.wav"),
            duration_ms: 3000,
            bytes: 48_044,
            sha256: "ab".repeat(32),
            retention_days,
        }
    }

    #[tokio::test]
    async fn quality_and_recordings_are_stored_once_and_filter_by_mos() {
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            // Quality arrives with call.completed; a later dialing event
            // does not erase it.
            for (call, q) in [
                ("c-good", Some(quality(4.3))),
                ("c-poor", Some(quality(2.9))),
                ("c-edge", Some(quality(3.6))),
                ("c-none", None),
            ] {
                assert!(repo
                    .apply(&format!("{call}-done"), &completed_with(call, q))
                    .await
                    .unwrap());
                repo.apply(
                    &format!("{call}-dial"),
                    &typed(types::CALL_DIALING, &event(call, "a1", "k1", None)),
                )
                .await
                .unwrap();
            }
            let poor = repo.get("c-poor").await.unwrap().unwrap();
            let q = poor.quality.as_ref().expect("quality stored");
            assert_eq!(q["mos"], 2.9, "{engine}: {q}");
            assert_eq!(q["packets_lost"], 3, "{engine}: {q}");
            assert_eq!(q["rtt_ms"], 12.0, "{engine}: {q}");
            assert_eq!(
                serde_json::from_value::<dialstack_contract::Quality>(q.clone()).unwrap(),
                quality(2.9),
                "{engine}: the contract's object, as sent"
            );
            assert!(repo.get("c-none").await.unwrap().unwrap().quality.is_none());
            let below = |mos: f64| {
                let repo = repo.clone();
                async move {
                    repo.list(&CdrQuery {
                        mos_below: Some(mos),
                        limit: 50,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|c| c.call_id)
                    .collect::<Vec<_>>()
                }
            };
            assert_eq!(below(3.6).await, ["c-poor"], "{engine}: strictly below");
            assert_eq!(
                below(3.61).await,
                ["c-poor", "c-edge"],
                "{engine}: in start order"
            );
            assert!(below(1.0).await.is_empty(), "{engine}");
            assert_eq!(below(5.0).await.len(), 3, "{engine}: no quality, no match");

            // Recordings: once per event id, joined into the CDR.
            assert!(repo
                .get("c-good")
                .await
                .unwrap()
                .unwrap()
                .recording
                .is_none());
            let r = ready("c-good", Some(30));
            assert!(repo.apply_recording("r1", &r).await.unwrap(), "{engine}");
            assert!(
                !repo.apply_recording("r1", &r).await.unwrap(),
                "{engine}: duplicate"
            );
            let stored = repo.recording("c-good").await.unwrap().unwrap();
            assert_eq!(stored.url, r.url, "{engine}");
            assert_eq!(
                (stored.bytes, stored.duration_ms),
                (48_044, 3000),
                "{engine}"
            );
            assert_eq!(
                stored.delete_after,
                Some(r.call.at_ms + 30 * 86_400_000),
                "{engine}"
            );
            let link = repo
                .get("c-good")
                .await
                .unwrap()
                .unwrap()
                .recording
                .unwrap();
            assert_eq!(link.href, "/v1/calls/c-good/recording", "{engine}");
            assert_eq!(link.sha256, r.sha256, "{engine}");
            assert_eq!(link.bytes, 48_044, "{engine}");
            // Kept forever without retention; a new event replaces the row.
            let again = RecordingReady {
                bytes: 50_000,
                ..ready("c-good", None)
            };
            assert!(repo.apply_recording("r2", &again).await.unwrap());
            let stored = repo.recording("c-good").await.unwrap().unwrap();
            assert_eq!(
                (stored.bytes, stored.delete_after),
                (50_000, None),
                "{engine}"
            );

            // Expiry: only rows whose time has passed, oldest first, and a
            // row is deleted only while it is the same expired recording.
            let now = dialstack_common::now_ms();
            repo.apply_recording("r3", &ready("c-poor", Some(1)))
                .await
                .unwrap();
            repo.apply_recording("r4", &ready("c-edge", Some(1)))
                .await
                .unwrap();
            repo.postpone_recording_delete("c-poor", now - 2_000)
                .await
                .unwrap();
            repo.postpone_recording_delete("c-edge", now - 1_000)
                .await
                .unwrap();
            let due = repo.expired_recordings(now, None, 10).await.unwrap();
            let due_ids: Vec<_> = due.iter().map(|r| r.call_id.as_str()).collect();
            assert_eq!(due_ids, ["c-poor", "c-edge"], "{engine}");
            assert_eq!(
                repo.expired_recordings(now, None, 1).await.unwrap().len(),
                1
            );
            assert!(!repo
                .delete_recording("c-poor", "file:///elsewhere.wav", now, None)
                .await
                .unwrap());
            assert!(
                repo.delete_recording("c-poor", &due[0].url, now, None)
                    .await
                    .unwrap(),
                "{engine}"
            );
            assert!(
                !repo
                    .delete_recording("c-poor", &due[0].url, now, None)
                    .await
                    .unwrap(),
                "{engine}: gone"
            );
            assert!(
                repo.recording("c-poor").await.unwrap().is_none(),
                "{engine}"
            );
            assert!(repo
                .get("c-poor")
                .await
                .unwrap()
                .unwrap()
                .recording
                .is_none());
        }
    }
}

mod monitor {
    use super::*;
    use monitor_service::db::{Applied, Repo, MIGRATIONS};

    #[tokio::test]
    async fn calls_are_counted_once_and_active_calls_follow_events() {
        for (engine, url) in both_databases() {
            let repo = Repo {
                db: db(&url, MIGRATIONS).await,
            };
            assert_eq!(
                repo.apply(
                    "d1",
                    &typed(types::CALL_DIALING, &event("c1", "a", "k1", None))
                )
                .await
                .unwrap(),
                Applied::Started,
                "{engine}"
            );
            assert_eq!(
                repo.apply(
                    "d1",
                    &typed(types::CALL_DIALING, &event("c1", "a", "k1", None))
                )
                .await
                .unwrap(),
                Applied::Nothing,
                "{engine}"
            );
            assert_eq!(repo.active().await.unwrap(), 1, "{engine}");
            let done = event("c1", "a", "k1", Some(Outcome::Busy));
            assert_eq!(
                repo.apply("x1", &typed(types::CALL_COMPLETED, &done))
                    .await
                    .unwrap(),
                Applied::Completed("busy".into()),
                "{engine}"
            );
            assert_eq!(repo.active().await.unwrap(), 0, "{engine}");
            // Completion seen before dialing: the call never counts as active.
            let done2 = event("c2", "a", "k2", Some(Outcome::AnsweredHuman));
            repo.apply("x2", &typed(types::CALL_COMPLETED, &done2))
                .await
                .unwrap();
            assert_eq!(
                repo.apply(
                    "d2",
                    &typed(types::CALL_DIALING, &event("c2", "a", "k2", None))
                )
                .await
                .unwrap(),
                Applied::Nothing,
                "{engine}"
            );
            assert_eq!(repo.active().await.unwrap(), 0, "{engine}");
            let all = repo.outcomes_since(0, None, None).await.unwrap();
            assert_eq!(
                (all.get("busy"), all.get("answered_human")),
                (Some(&1), Some(&1)),
                "{engine}"
            );
            let k1 = repo.outcomes_since(0, Some("k1"), None).await.unwrap();
            assert_eq!(k1.values().sum::<i64>(), 1, "{engine}");
            // Team scope: one sales call in progress, one completed.
            let sales = |call: &str, outcome| CallEventData {
                team: Some("sales".into()),
                ..event(call, "a", "k9", outcome)
            };
            repo.apply("s1", &typed(types::CALL_DIALING, &sales("c8", None)))
                .await
                .unwrap();
            repo.apply(
                "s2",
                &typed(types::CALL_COMPLETED, &sales("c9", Some(Outcome::Busy))),
            )
            .await
            .unwrap();
            let teams = ["sales".to_owned()];
            let scoped = repo.outcomes_since(0, None, Some(&teams)).await.unwrap();
            assert_eq!(scoped.get("busy"), Some(&1), "{engine}");
            assert_eq!(scoped.values().sum::<i64>(), 1, "{engine}");
            assert_eq!(repo.active_in(Some(&teams)).await.unwrap(), 1, "{engine}");
            assert_eq!(repo.active_in(Some(&[])).await.unwrap(), 0, "{engine}");
            let none = repo.outcomes_since(0, None, Some(&[])).await.unwrap();
            assert!(none.is_empty(), "{engine}");
            repo.apply(
                "s3",
                &typed(types::CALL_COMPLETED, &sales("c8", Some(Outcome::Busy))),
            )
            .await
            .unwrap();
            assert!(
                repo.outcomes_since(dialstack_common::now_ms() + 60_000, None, None)
                    .await
                    .unwrap()
                    .is_empty(),
                "{engine}"
            );
            repo.apply(
                "d3",
                &typed(
                    types::CALL_DIALING,
                    &CallEventData {
                        at_ms: 1,
                        ..event("c3", "a", "k1", None)
                    },
                ),
            )
            .await
            .unwrap();
            assert_eq!(
                repo.reap_active(60_000).await.unwrap(),
                1,
                "{engine}: stale active call forgotten"
            );
        }
    }
}

mod users {
    use super::*;
    use user_service::db::{Repo, MIGRATIONS};

    #[tokio::test]
    async fn users_and_signing_keys() {
        for (engine, url) in both_databases() {
            let repo = Repo::new(db(&url, MIGRATIONS).await);
            assert!(!repo.has_role(Role::Admin).await.unwrap(), "{engine}");
            let u = repo
                .upsert_user("alice", Role::Agent, "hash-1")
                .await
                .unwrap();
            let again = repo
                .upsert_user("alice", Role::Supervisor, "hash-2")
                .await
                .unwrap();
            assert_eq!(again.id, u.id, "{engine}: same user updated");
            assert_eq!(
                (again.role, again.password_hash.as_str()),
                (Role::Supervisor, "hash-2"),
                "{engine}"
            );
            assert_eq!(
                repo.user_by_id(&u.id).await.unwrap().unwrap().username,
                "alice",
                "{engine}"
            );
            assert!(
                repo.user_by_name("bob").await.unwrap().is_none(),
                "{engine}"
            );
            assert!(repo.has_role(Role::Supervisor).await.unwrap(), "{engine}");
            let k1 = repo.current_signing_key().await.unwrap();
            let k2 = repo.current_signing_key().await.unwrap();
            assert_eq!(k1.kid, k2.kid, "{engine}: the key is stable");
            let jwks = repo.jwks().await.unwrap();
            assert_eq!(jwks.keys, vec![k1.jwk()], "{engine}");
        }
    }

    #[tokio::test]
    async fn agents_filter_by_exact_team_and_user_changes_keep_an_admin() {
        use user_service::db::{Agent, UserChange, UserUpdate};
        use user_service::domain::AgentState;
        for (engine, url) in both_databases() {
            let repo = Repo::new(db(&url, MIGRATIONS).await);
            let admin = repo.upsert_user("root", Role::Admin, "h").await.unwrap();
            for (name, team) in [("ann", "night_shift"), ("bob", "nightxshift")] {
                let u = repo.upsert_user(name, Role::Agent, "h").await.unwrap();
                repo.upsert_agent(&Agent {
                    id: u.id,
                    display_name: name.into(),
                    sip_uri: format!("sip:{name}@x"),
                    teams: vec![team.into()],
                    skills: Default::default(),
                    max_concurrent: 1,
                    state: AgentState::Offline,
                    pause_code: None,
                    state_since: 0,
                    last_heartbeat: 0,
                })
                .await
                .unwrap();
            }
            let night = repo.agents(None, Some("night_shift"), None).await.unwrap();
            assert_eq!(night.len(), 1, "{engine}: '_' is not a wildcard");
            assert_eq!(night[0].display_name, "ann", "{engine}");
            let demote = UserUpdate {
                role: Some(Role::Supervisor),
                ..Default::default()
            };
            assert_eq!(
                repo.update_user(&admin.id, &demote).await.unwrap(),
                UserChange::LastAdmin,
                "{engine}"
            );
            assert_eq!(
                repo.delete_user(&admin.id).await.unwrap(),
                UserChange::LastAdmin,
                "{engine}"
            );
            let second = repo.upsert_user("root2", Role::Admin, "h").await.unwrap();
            assert!(matches!(
                repo.update_user(&admin.id, &demote).await.unwrap(),
                UserChange::Done(Some(u)) if u.role == Role::Supervisor
            ));
            assert_eq!(
                repo.delete_user(&second.id).await.unwrap(),
                UserChange::LastAdmin,
                "{engine}: root is no longer an admin"
            );
            // Two admins demoting each other at the same moment: one wins.
            let third = repo.upsert_user("root3", Role::Admin, "h").await.unwrap();
            for round in 0..5 {
                let (x, y) = tokio::join!(
                    repo.update_user(&second.id, &demote),
                    repo.update_user(&third.id, &demote)
                );
                let admins = repo
                    .users()
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|u| u.role == Role::Admin)
                    .count();
                assert_eq!(admins, 1, "{engine} round {round}: {x:?} / {y:?}");
                let promote = UserUpdate {
                    role: Some(Role::Admin),
                    ..Default::default()
                };
                for id in [&second.id, &third.id] {
                    repo.update_user(id, &promote).await.unwrap();
                }
            }
        }
    }
}

mod media {
    use super::*;
    use media_processor::db::{CallLog, MIGRATIONS};

    #[tokio::test]
    async fn the_call_log_records_each_attempt_once_and_its_events_with_the_call_row() {
        for (engine, url) in both_databases() {
            let db = db(&url, MIGRATIONS).await;
            let log = CallLog::start(db.clone());
            // Each attempt dialed twice at once (a redelivered dial).
            let recorded = futures_util::future::join_all((0..40).map(|i| {
                let log = log.clone();
                async move {
                    log.record_call(
                        &format!("c{}", i % 20),
                        &format!("a{}", i % 20),
                        "k1",
                        &format!("p{i}"),
                    )
                    .await
                    .unwrap()
                }
            }))
            .await;
            for a in 0..20 {
                assert_eq!(
                    recorded[a] as u8 + recorded[a + 20] as u8,
                    1,
                    "{engine}: attempt {a} recorded once"
                );
            }
            let emitted = futures_util::future::join_all((0..20).map(|i| {
                let log = log.clone();
                async move {
                    let call = format!("c{i}");
                    let e = event(&call, &format!("a{i}"), "k1", Some(Outcome::NoAnswer));
                    log.emit("media-processor", &typed(types::CALL_DIALING, &e))
                        .await?;
                    log.emit("media-processor", &typed(types::CALL_COMPLETED, &e))
                        .await
                }
            }))
            .await;
            assert!(emitted.iter().all(|r| r.is_ok()), "{engine}: {emitted:?}");
            assert_eq!(
                count(&db, "SELECT COUNT(*) FROM calls WHERE state = 'call.completed' AND outcome = 'no_answer'").await,
                20,
                "{engine}"
            );
            assert_eq!(
                count(
                    &db,
                    "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND channel = 'events'"
                )
                .await,
                40,
                "{engine}"
            );
            // A row is its placer's: the same placer again (its earlier
            // try's answer was lost) may place the call, another may not.
            let mut placers = Vec::new();
            for (i, first) in recorded.iter().take(20).enumerate() {
                let p = format!("p{}", if *first { i } else { i + 20 });
                let ours = log
                    .record_call(&format!("c{i}"), &format!("a{i}"), "k1", &p)
                    .await
                    .unwrap();
                placers.push(ours);
            }
            assert_eq!(
                placers.iter().filter(|o| **o).count(),
                20,
                "{engine}: each row is the placer's that wrote it first"
            );
            let p0 = if recorded[0] { "p0" } else { "p20" };
            assert!(
                !log.record_call("c0", "a0", "k1", "stranger").await.unwrap(),
                "{engine}"
            );
            // A call id reused for another attempt is not ours either.
            assert!(
                !log.record_call("c0", "a-other", "k1", p0).await.unwrap(),
                "{engine}"
            );
            // Rows written before placers existed are nobody's.
            sqlx::query("UPDATE calls SET placer = NULL WHERE call_id = 'c1'")
                .execute(&db.pool)
                .await
                .unwrap();
            let p1 = if recorded[1] { "p1" } else { "p21" };
            assert!(
                !log.record_call("c1", "a1", "k1", p1).await.unwrap(),
                "{engine}"
            );
        }
    }

    /// The commit of a call's row reaches MariaDB but its answer is lost
    /// (the connection is cut right after the `COMMIT`): the writer sees an
    /// error, the row is there. Its retry with the same placer finds the row
    /// its own and may place the call; any other delivery may not. Before
    /// placers, the retry took the row for a redelivered dial's and dropped
    /// the call, leaving its claimed attempt to the reaper (`media_lost`).
    #[tokio::test]
    async fn a_call_row_whose_commit_answer_was_lost_is_still_its_placers() {
        use dialstack_tests::proxy::CuttingProxy;
        let (hostport, upstream) = dialstack_tests::mysql_server_addr().await;
        let url = dialstack_tests::fresh_mysql_url();
        // Schema first, straight to the server.
        let direct = db(&url, MIGRATIONS).await;
        let proxy = CuttingProxy::start(upstream, b"INTO calls (", b"COMMIT").await;
        let through = url.replace(&hostport, &format!("127.0.0.1:{}", proxy.port));
        let log = CallLog::start(db(&through, MIGRATIONS).await);
        let first = log.record_call("c-cut", "a-cut", "k1", "placer-1").await;
        assert!(
            proxy.cut.load(std::sync::atomic::Ordering::SeqCst),
            "the proxy cut the commit's answer"
        );
        assert!(first.is_err(), "the writer saw its commit fail: {first:?}");
        assert_eq!(
            count(
                &direct,
                "SELECT COUNT(*) FROM calls WHERE call_id = 'c-cut' AND placer = 'placer-1'"
            )
            .await,
            1,
            "the row was committed all the same"
        );
        assert!(
            log.record_call("c-cut", "a-cut", "k1", "placer-1")
                .await
                .expect("the retry through a new connection"),
            "the retry knows the row for its own"
        );
        assert!(
            !log.record_call("c-cut", "a-cut", "k1", "placer-2")
                .await
                .unwrap(),
            "another delivery does not"
        );

        // The same for an event: the retry of the same write finds its row
        // and is its success, with one outbox row, not two events.
        let proxy = CuttingProxy::start(upstream, b"INTO outbox (", b"COMMIT").await;
        let through = url.replace(&hostport, &format!("127.0.0.1:{}", proxy.port));
        let log = CallLog::start(db(&through, MIGRATIONS).await);
        let e = event("c-cut", "a-cut", "k1", Some(Outcome::AnsweredHuman));
        let write = media_processor::db::CallWrite::emit(
            "media-processor",
            &typed(types::CALL_COMPLETED, &e),
        );
        let first = log.emit_write(write.clone()).await;
        assert!(proxy.cut.load(std::sync::atomic::Ordering::SeqCst));
        assert!(first.is_err(), "{first:?}");
        let id = log.emit_write(write).await.expect("the retry succeeds");
        assert_eq!(
            count(
                &direct,
                &format!("SELECT COUNT(*) FROM outbox WHERE id = '{id}'")
            )
            .await,
            1
        );
        assert_eq!(
            count(&direct, "SELECT COUNT(*) FROM outbox").await,
            1,
            "one event for one write"
        );
    }
}

/// The inbox is pruned by age: entries older than the horizon go (in
/// bounded batches), newer ones stay and still de-duplicate.
#[tokio::test]
async fn inbox_entries_older_than_the_horizon_are_pruned() {
    for (engine, url) in both_databases() {
        let db = db(&url, &[]).await;
        let mut tx = db.begin().await.unwrap();
        for i in 0..30 {
            assert!(inbox_claim(&mut tx, db.dialect, "c", &format!("e{i}"))
                .await
                .unwrap());
        }
        tx.commit().await.unwrap();
        let now = dialstack_common::now_ms();
        sqlx::query("UPDATE inbox SET received_at = ? WHERE event_id < 'e2'")
            .bind(now - dialstack_common::db::INBOX_HORIZON_MS - 1_000)
            .execute(&db.pool)
            .await
            .unwrap();
        let old = count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM inbox WHERE received_at < {}",
                now - dialstack_common::db::INBOX_HORIZON_MS
            ),
        )
        .await;
        assert!(old > 0, "{engine}");
        let pruned =
            dialstack_common::db::prune_inbox(&db, now - dialstack_common::db::INBOX_HORIZON_MS)
                .await
                .unwrap();
        assert_eq!(pruned as i64, old, "{engine}");
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM inbox").await,
            30 - old,
            "{engine}"
        );
        let mut tx = db.begin().await.unwrap();
        assert!(
            !inbox_claim(&mut tx, db.dialect, "c", "e29").await.unwrap(),
            "{engine}: a kept entry still de-duplicates"
        );
        tx.rollback().await.unwrap();
    }
}

/// A broker that accepts the TCP connection but never speaks AMQP (a hung
/// broker) fails the connect within the timeout instead of blocking the
/// service's start or its outbox relay forever.
#[tokio::test]
async fn a_hung_broker_fails_the_connect_within_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
            if held.len() > 16 {
                break;
            }
        }
    });
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f?namespace=hung");
    let started = std::time::Instant::now();
    let r = dialstack_common::bus::Channel::connect(&url, dialstack_common::bus::EVENTS).await;
    let took = started.elapsed();
    assert!(r.is_err(), "a hung broker is an error");
    // Every try is waited out, and no more than that.
    use dialstack_common::bus::amqp::{CONNECT_TIMEOUT, CONNECT_TRIES};
    let bound = CONNECT_TIMEOUT * CONNECT_TRIES;
    assert!(
        took >= bound - std::time::Duration::from_secs(1)
            && took < bound + std::time::Duration::from_secs(10),
        "{took:?}"
    );
    hold.abort();
}
