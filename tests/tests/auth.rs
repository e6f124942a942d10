//! user-service authentication on SQLite and on MariaDB: refresh-token
//! rotation (also under concurrent presentation), logout, client
//! credentials, login throttling (pair backoff, address and account caps,
//! atomic under concurrency), the bounded password hashing pool, revocations
//! applied by user-service itself, signing-key rotation and the audit log.
//! Each case runs a real user-service on a free port; other clients come
//! from other loopback addresses.

use std::collections::HashMap;
use std::time::Duration;

use dialstack_tests::users::{client_from, Reply, Users, ADMIN_PASSWORD, SERVICE_PASSWORD};
use dialstack_tests::{both_databases, eventually};
use reqwest::Method;
use serde_json::{json, Value};

async fn users(database_url: &str) -> Users {
    Users::start(database_url, "memory://auth-tests").await
}

async fn audit(u: &Users, token: &str) -> (u16, Value) {
    u.call(Method::GET, "/v1/audit?limit=1000", token, None)
        .await
}

/// Statuses counted.
fn tally(replies: &[Reply]) -> HashMap<u16, usize> {
    let mut t = HashMap::new();
    for r in replies {
        *t.entry(r.status).or_default() += 1;
    }
    t
}

/// Every refusal is the standard error body with the right code, and 429
/// and 503 say when to come back.
fn assert_error_bodies(replies: &[Reply], what: &str) {
    for r in replies.iter().filter(|r| r.status >= 400) {
        let code = match r.status {
            401 => "unauthorized",
            429 => "rate_limited",
            503 => "unavailable",
            other => panic!("{what}: unexpected status {other}: {}", r.body),
        };
        assert_eq!(r.body["code"], code, "{what}: {}", r.body);
        assert!(r.body["message"].as_str().is_some(), "{what}: {}", r.body);
        assert!(
            r.body["request_id"].as_str().is_some(),
            "{what}: {}",
            r.body
        );
        if r.status != 401 {
            let secs: u64 = r
                .retry_after
                .as_deref()
                .unwrap_or_else(|| panic!("{what}: {} without Retry-After", r.status))
                .parse()
                .unwrap();
            assert!(secs >= 1, "{what}: Retry-After {secs}");
        }
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_session() {
    for (engine, url) in both_databases() {
        let u = users(&url).await;
        let first = u.login("admin", ADMIN_PASSWORD).await;
        assert_eq!(first.status, 200, "{engine}");
        let first = first.body;
        let r1 = first["refresh_token"].as_str().unwrap().to_owned();
        let second = u
            .post("/v1/auth/refresh", json!({"refresh_token": r1}))
            .await;
        assert_eq!(second.status, 200, "{engine}: rotation");
        let second = second.body;
        let r2 = second["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(r1, r2, "{engine}");
        assert!(
            second["access_token"].as_str().unwrap().split('.').count() == 3,
            "{engine}"
        );
        // The old token again: reuse, the whole family is revoked...
        let r = u
            .post("/v1/auth/refresh", json!({"refresh_token": r1}))
            .await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (401, Some("unauthorized")),
            "{engine}"
        );
        // ...so the newest token of the family no longer works either.
        let r = u
            .post("/v1/auth/refresh", json!({"refresh_token": r2}))
            .await;
        assert_eq!(r.status, 401, "{engine}: family revoked");
        let r = u
            .post("/v1/auth/refresh", json!({"refresh_token": "made-up"}))
            .await;
        assert_eq!(r.status, 401, "{engine}");
        let r = u.post("/v1/auth/refresh", json!({"token": 1})).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (400, Some("invalid_json")),
            "{engine}"
        );

        let token = first["access_token"].as_str().unwrap();
        let (status, log) = audit(&u, token).await;
        assert_eq!(status, 200, "{engine}");
        let kinds: Vec<&str> = log
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(
            kinds.contains(&"login_succeeded") && kinds.contains(&"token_family_revoked"),
            "{engine}: {kinds:?}"
        );
        assert!(
            !log.to_string().contains(&r1),
            "{engine}: no secret in the audit log"
        );
    }
}

/// Both presentations of one refresh token at once, for `sessions` sessions
/// at once: exactly one of each pair wins, the other gets 401, and no token
/// of the session works afterwards (the winner's new one included).
async fn double_refreshes(engine: &str, url: &str, sessions: usize) {
    let u = users(url).await;
    let mut tokens = Vec::new();
    for _ in 0..sessions {
        let r = u.login("admin", ADMIN_PASSWORD).await;
        assert_eq!(r.status, 200, "{engine}: {}", r.body);
        tokens.push(r.body["refresh_token"].as_str().unwrap().to_owned());
    }
    let u = &u;
    let races = tokens.iter().map(|t| async move {
        let refresh = || u.post("/v1/auth/refresh", json!({"refresh_token": t}));
        let (a, b) = tokio::join!(refresh(), refresh());
        (t.clone(), a, b)
    });
    let results = futures_util::future::join_all(races).await;
    for (i, (old, a, b)) in results.iter().enumerate() {
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 401],
            "{engine}: session {i}: {} / {}",
            a.body,
            b.body
        );
        let winner = if a.status == 200 { a } else { b };
        let loser = if a.status == 200 { b } else { a };
        assert_eq!(
            loser.body["code"], "unauthorized",
            "{engine}: {}",
            loser.body
        );
        let new = winner.body["refresh_token"].as_str().unwrap();
        for t in [new, old.as_str()] {
            let r = u
                .post("/v1/auth/refresh", json!({"refresh_token": t}))
                .await;
            assert_eq!(
                r.status, 401,
                "{engine}: session {i}: a token survived: {}",
                r.body
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_of_one_token_leave_exactly_one_winner_and_no_survivor() {
    for (engine, url) in both_databases() {
        double_refreshes(engine, &url, 30).await;
    }
}

#[tokio::test]
async fn logout_ends_the_session_and_the_audit_log_is_for_admins() {
    for (engine, url) in both_databases() {
        let u = users(&url).await;
        let session = u.login("admin", ADMIN_PASSWORD).await.body;
        let r = session["refresh_token"].as_str().unwrap();
        let resp = u
            .http
            .post(format!("{}/v1/auth/logout", u.url))
            .json(&json!({"refresh_token": r}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "{engine}");
        let reply = u
            .post("/v1/auth/refresh", json!({"refresh_token": r}))
            .await;
        assert_eq!(reply.status, 401, "{engine}: logged out");
        let service = u.service_token().await;
        let (status, body) = audit(&u, &service).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("forbidden")),
            "{engine}: service accounts cannot read the audit log"
        );
    }
}

#[tokio::test]
async fn service_accounts_get_tokens_by_client_credentials_and_nobody_else() {
    for (engine, url) in both_databases() {
        let u = users(&url).await;
        let grant = |id: &str, secret: &str| json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret});
        let r = u
            .post(
                "/v1/auth/token",
                grant(user_service::SERVICE_ACCOUNT, SERVICE_PASSWORD),
            )
            .await;
        assert_eq!(r.status, 200, "{engine}: {}", r.body);
        assert!(
            r.body.get("refresh_token").is_none(),
            "{engine}: no refresh token"
        );
        let token = r.body["access_token"].as_str().unwrap();
        let (_, me) = u.call(Method::GET, "/v1/users/me", token, None).await;
        assert_eq!(me["role"], "service", "{engine}");
        // A service account is bound to its client credentials: its secret
        // is not a password for the login endpoint.
        let r = u
            .login(user_service::SERVICE_ACCOUNT, SERVICE_PASSWORD)
            .await;
        assert_eq!(r.status, 401, "{engine}: {}", r.body);
        for (body, want) in [
            (grant(user_service::SERVICE_ACCOUNT, "wrong secret"), 401),
            // The right password of a person is not a client credential.
            (grant("admin", ADMIN_PASSWORD), 401),
            (grant("nobody", "whatever"), 401),
            (
                json!({"grant_type": "password", "client_id": "admin", "client_secret": ADMIN_PASSWORD}),
                400,
            ),
            (json!({"client_id": "admin"}), 400),
            (
                json!({"grant_type": "client_credentials", "client_id": "", "client_secret": "x"}),
                400,
            ),
        ] {
            let r = u.post("/v1/auth/token", body.clone()).await;
            assert_eq!(r.status, want, "{engine}: {body} -> {}", r.body);
            assert!(
                r.body["request_id"].as_str().is_some(),
                "{engine}: {}",
                r.body
            );
        }
        let admin = u.admin().await;
        let (_, audit) = audit(&u, &admin).await;
        let failed = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "client_credentials_failed")
            .count();
        assert_eq!(failed, 3, "{engine}: {audit}");
    }
}

#[tokio::test]
async fn a_guesser_slows_only_its_own_address_and_the_owner_still_logs_in() {
    for (engine, url) in both_databases() {
        let u = users(&url).await;
        let attacker = client_from("127.0.0.2");
        let mut replies = Vec::new();
        for i in 0..120 {
            replies.push(
                u.login_with(&attacker, "admin", &format!("wrong password {i}"))
                    .await,
            );
        }
        assert_error_bodies(&replies, engine);
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses[..6],
            [401, 401, 401, 401, 401, 429],
            "{engine}: five free guesses, then the pair backs off"
        );
        assert_eq!(replies[5].retry_after.as_deref(), Some("1"), "{engine}");
        // A guess per elapsed backoff (1 s, 2 s, 4 s...) at most.
        let t = tally(&replies);
        assert!(
            t.get(&401) < Some(&9) && t.get(&429) > Some(&111),
            "{engine}: {t:?}"
        );
        // The owner, from another address, with the right password.
        let r = u.login("admin", ADMIN_PASSWORD).await;
        assert_eq!(
            r.status, 200,
            "{engine}: the owner is not locked out: {}",
            r.body
        );
        // The guesser may go on after the wait it was told, once, and then
        // waits at least twice as long.
        let wait: u64 = replies[119]
            .retry_after
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let r = u.login_with(&attacker, "admin", "one more guess").await;
        assert_eq!(r.status, 401, "{engine}: {}", r.body);
        let r = u.login_with(&attacker, "admin", "and another").await;
        assert_eq!(r.status, 429, "{engine}: {}", r.body);
        let next: u64 = r.retry_after.as_deref().unwrap().parse().unwrap();
        assert!(next >= 2 * wait, "{engine}: backoff {wait}s then {next}s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_many_addresses_cannot_pass_the_account_cap_nor_lock_out_a_known_address() {
    for (engine, url) in both_databases() {
        let u = Users::start_with(
            &url,
            "memory://auth-tests",
            &[
                ("DIALSTACK_LOGIN_ACCOUNT_FAILURES_PER_HOUR", "10"),
                ("DIALSTACK_PASSWORD_HASH_QUEUE", "100"),
            ],
        )
        .await;
        // The owner has logged in from here before: a known address.
        assert_eq!(
            u.login("admin", ADMIN_PASSWORD).await.status,
            200,
            "{engine}"
        );
        // 40 guesses at once, each from its own address.
        let u = &u;
        let guesses = (0..40).map(|i| async move {
            let from = client_from(&format!("127.0.1.{}", i + 1));
            u.login_with(&from, "admin", &format!("guess {i}")).await
        });
        let replies = futures_util::future::join_all(guesses).await;
        assert_error_bodies(&replies, engine);
        let t = tally(&replies);
        assert_eq!(
            (t.get(&401), t.get(&429)),
            (Some(&10), Some(&30)),
            "{engine}: exactly the cap was checked, however concurrent: {t:?}"
        );
        let r = u.login("admin", ADMIN_PASSWORD).await;
        assert_eq!(
            r.status, 200,
            "{engine}: the known address gets in: {}",
            r.body
        );
        // An address the account never used waits like the guessers.
        let r = u
            .login_with(&client_from("127.0.2.1"), "admin", ADMIN_PASSWORD)
            .await;
        assert_eq!(r.status, 429, "{engine}: {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_from_one_address_cannot_pass_its_cap() {
    for (engine, url) in both_databases() {
        let u = Users::start_with(
            &url,
            "memory://auth-tests",
            &[
                ("DIALSTACK_LOGIN_IP_FAILURES_PER_HOUR", "10"),
                ("DIALSTACK_PASSWORD_HASH_QUEUE", "200"),
            ],
        )
        .await;
        let u = &u;
        let from = client_from("127.0.0.3");
        let from = &from;
        // Password spraying: one guess each at 100 accounts, all at once.
        let guesses = (0..100)
            .map(|i| async move { u.login_with(from, &format!("user{i}"), "Summer2026!").await });
        let replies = futures_util::future::join_all(guesses).await;
        assert_error_bodies(&replies, engine);
        let t = tally(&replies);
        assert_eq!(
            (t.get(&401), t.get(&429)),
            (Some(&10), Some(&90)),
            "{engine}: {t:?}"
        );
        // The whole address waits, client credentials too; others do not.
        assert_eq!(
            u.login_with(from, "admin", ADMIN_PASSWORD).await.status,
            429,
            "{engine}"
        );
        assert_eq!(
            u.client_token_with(from, "svc", "x").await.status,
            429,
            "{engine}: client credentials count too"
        );
        assert_eq!(
            u.login("admin", ADMIN_PASSWORD).await.status,
            200,
            "{engine}"
        );
    }
    for var in [
        "DIALSTACK_LOGIN_IP_FAILURES_PER_HOUR",
        "DIALSTACK_LOGIN_ACCOUNT_FAILURES_PER_HOUR",
        "DIALSTACK_LOGIN_FREE_ATTEMPTS",
        "DIALSTACK_LOGIN_BACKOFF_MAX_SECS",
        "DIALSTACK_PASSWORD_HASH_WORKERS",
        "DIALSTACK_PASSWORD_HASH_QUEUE",
    ] {
        let bad = user_service::Config::from_env(&dialstack_common::config::Env::from_pairs([
            ("DIALSTACK_DATABASE_URL", "sqlite://x.db"),
            ("DIALSTACK_EVENTS_URL", "memory://"),
            (var, "0"),
        ]))
        .unwrap_err();
        assert_eq!(bad.var, var);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_failing_on_the_service_account_do_not_refuse_its_secret() {
    for (engine, url) in both_databases() {
        let u = Users::start_with(
            &url,
            "memory://auth-tests",
            &[("DIALSTACK_PASSWORD_HASH_QUEUE", "200")],
        )
        .await;
        let u = &u;
        // 100 bad client-credential requests from 50 addresses, at once.
        let bad = (0..100).map(|i| async move {
            let from = client_from(&format!("127.0.3.{}", i % 50 + 1));
            u.client_token_with(&from, user_service::SERVICE_ACCOUNT, &format!("guess {i}"))
                .await
        });
        let replies = futures_util::future::join_all(bad).await;
        assert_error_bodies(&replies, engine);
        assert_eq!(
            tally(&replies).get(&401),
            Some(&100),
            "{engine}: two guesses per address stay within the free attempts"
        );
        // The media processor, from its own address, with the right secret.
        let r = u
            .client_token_with(&u.http, user_service::SERVICE_ACCOUNT, SERVICE_PASSWORD)
            .await;
        assert_eq!(r.status, 200, "{engine}: {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_is_bounded_by_the_hashing_pool_and_the_owner_gets_in() {
    for (engine, url) in both_databases() {
        let u = Users::start_with(
            &url,
            "memory://auth-tests",
            &[
                ("DIALSTACK_PASSWORD_HASH_WORKERS", "2"),
                ("DIALSTACK_PASSWORD_HASH_QUEUE", "8"),
            ],
        )
        .await;
        // The owner has logged in from here before.
        assert_eq!(
            u.login("admin", ADMIN_PASSWORD).await.status,
            200,
            "{engine}"
        );
        let u = &u;
        let attacker = client_from("127.0.0.4");
        let attacker = &attacker;
        // 200 logins at once of unknown users: each would cost 19 MiB.
        let storm =
            futures_util::future::join_all((0..200).map(|i| async move {
                u.login_with(attacker, &format!("nobody{i}"), "guess").await
            }));
        let owner = async {
            // Once the storm fills the pool.
            eventually(
                &format!("{engine}: queue full"),
                Duration::from_secs(10),
                || async {
                    match u.metric("dialstack_password_hash_rejected_total").await {
                        n if n > 0.0 => Ok(()),
                        n => Err(n.to_string()),
                    }
                },
            )
            .await;
            u.login("admin", ADMIN_PASSWORD).await
        };
        let (replies, owner) = tokio::join!(storm, owner);
        assert_error_bodies(&replies, engine);
        let t = tally(&replies);
        assert_eq!(
            t.get(&401).unwrap_or(&0) + t.get(&503).unwrap_or(&0),
            200,
            "{engine}: {t:?}"
        );
        assert!(
            t.contains_key(&503),
            "{engine}: beyond the queue, 503: {t:?}"
        );
        assert!(
            t.get(&401).unwrap_or(&0) >= &8,
            "{engine}: the queue was served: {t:?}"
        );
        assert_eq!(
            owner.status, 200,
            "{engine}: the owner during the storm: {}",
            owner.body
        );
        let peak = u.metric("dialstack_password_hash_running_peak").await;
        assert!(
            (1.0..=2.0).contains(&peak),
            "{engine}: at most the workers hashed at once: {peak}"
        );
        assert_eq!(
            u.metric("dialstack_password_hash_queued").await,
            0.0,
            "{engine}"
        );
        // After the storm anyone gets in.
        let r = u
            .login_with(&client_from("127.0.0.5"), "admin", ADMIN_PASSWORD)
            .await;
        assert_eq!(r.status, 200, "{engine}: {}", r.body);
    }
}

#[tokio::test]
async fn an_access_token_from_before_a_password_change_is_refused_by_user_service() {
    for (engine, url) in both_databases() {
        let u = users(&url).await;
        let r = u.login("admin", ADMIN_PASSWORD).await;
        assert_eq!(r.status, 200, "{engine}: {} {:?}", r.body, r.retry_after);
        let old = r.body["access_token"].as_str().unwrap().to_owned();
        let new_admin = |token: String, name: &'static str| {
            let u = &u;
            async move {
                u.call(
                    Method::POST,
                    "/v1/users",
                    &token,
                    Some(json!({"username": name, "password": "a long enough password", "role": "admin"})),
                )
                .await
            }
        };
        assert_eq!(new_admin(old.clone(), "ada").await.0, 201, "{engine}");
        let (status, _) = u
            .call(
                Method::PUT,
                "/v1/users/me/password",
                &old,
                Some(json!({"current_password": ADMIN_PASSWORD, "new_password": "a brand new passphrase"})),
            )
            .await;
        assert_eq!(status, 204, "{engine}");
        let (status, body) = new_admin(old.clone(), "eve").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{engine}: the token from before the change: {body}"
        );
        let r = u.login("admin", "a brand new passphrase").await;
        assert_eq!(r.status, 200, "{engine}: {} {:?}", r.body, r.retry_after);
        let fresh = r.body["access_token"].as_str().unwrap().to_owned();
        assert_eq!(new_admin(fresh.clone(), "eve").await.0, 201, "{engine}");
        // A reset by another admin voids the user's tokens the same way.
        let ada = u.token("ada", "a long enough password").await;
        let (_, me) = u.call(Method::GET, "/v1/users/me", &fresh, None).await;
        let (status, _) = u
            .call(
                Method::PATCH,
                &format!("/v1/users/{}", me["id"].as_str().unwrap()),
                &ada,
                Some(json!({"password": "reset by another admin"})),
            )
            .await;
        assert_eq!(status, 200, "{engine}");
        assert_eq!(
            new_admin(fresh, "mallory").await.0,
            401,
            "{engine}: after the reset"
        );
    }
}

fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    serde_json::from_slice::<Value>(&header).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn rotation_on(engine: &str, url: String) {
    let users = Users::start_with(
        &url,
        "memory://rotation-tests",
        &[
            ("DIALSTACK_ACCESS_TOKEN_TTL_SECS", "1"),
            ("DIALSTACK_KEY_PUBLISH_DELAY_SECS", "2"),
        ],
    )
    .await;
    let u = &users;
    let jwks = || async {
        let v: Value = u
            .http
            .get(format!("{}/.well-known/jwks.json", u.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let first = u.login("admin", ADMIN_PASSWORD).await.body;
    let old_kid = kid_of(first["access_token"].as_str().unwrap());
    assert_eq!(jwks().await, vec![old_kid.clone()], "{engine}");
    // A long-lived token signed with the old key, as a client could hold one.
    let db = dialstack_common::db::Db::connect(&url).await.unwrap();
    let seed: String = sqlx::Row::get(
        &sqlx::query("SELECT seed FROM signing_keys WHERE kid = ?")
            .bind(&old_kid)
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        0,
    );
    let seed = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(seed)
            .unwrap()
    };
    let old_key = dialstack_common::auth::SigningKey::from_seed(old_kid.clone(), &seed).unwrap();
    let admin_id: Value = u
        .http
        .get(format!("{}/v1/users/me", u.url))
        .bearer_auth(first["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let held = old_key.sign(&dialstack_common::auth::new_claims(
        admin_id["id"].as_str().unwrap(),
        dialstack_common::auth::Role::Admin,
        Duration::from_secs(3600),
    ));
    let me = |t: String| async move {
        u.http
            .get(format!("{}/v1/users/me", u.url))
            .bearer_auth(t)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    let r = u
        .http
        .post(format!("{}/v1/keys/rotate", u.url))
        .bearer_auth(first["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{engine}");
    let rotation: Value = r.json().await.unwrap();
    let new_kid = rotation["kid"].as_str().unwrap().to_owned();
    let mut published = jwks().await;
    published.sort();
    let mut both = vec![old_kid.clone(), new_kid.clone()];
    both.sort();
    assert_eq!(
        published, both,
        "{engine}: the new key is published before it signs"
    );
    let early = u.login("admin", ADMIN_PASSWORD).await.body;
    assert_eq!(
        kid_of(early["access_token"].as_str().unwrap()),
        old_kid,
        "{engine}: not signing yet"
    );

    eventually(
        &format!("{engine}: new key signs"),
        Duration::from_secs(10),
        || async {
            let t = u.login("admin", ADMIN_PASSWORD).await.body;
            let kid = kid_of(t["access_token"].as_str().unwrap());
            if kid == new_kid {
                Ok(())
            } else {
                Err(kid)
            }
        },
    )
    .await;
    assert_eq!(
        me(held.clone()).await,
        200,
        "{engine}: the old key still verifies"
    );
    // After a token lifetime plus the leeway the old key leaves the JWKS, and
    // what it signed is refused.
    eventually(
        &format!("{engine}: old key retired"),
        Duration::from_secs(60),
        || async {
            let keys = jwks().await;
            if keys == vec![new_kid.clone()] {
                Ok(())
            } else {
                Err(format!("{keys:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        me(held).await,
        401,
        "{engine}: signed by a key no longer in the JWKS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate_published_first_and_retired_after_their_tokens() {
    let [(e1, u1), (e2, u2)] = both_databases();
    tokio::join!(rotation_on(e1, u1), rotation_on(e2, u2));
}

#[tokio::test]
async fn changing_the_password_ends_every_session() {
    for (engine, url) in both_databases() {
        let u = users(&url).await;
        let session = u.login("admin", ADMIN_PASSWORD).await.body;
        let token = session["access_token"].as_str().unwrap().to_owned();
        let change = |current: &str, new: &str| {
            u.http
                .put(format!("{}/v1/users/me/password", u.url))
                .bearer_auth(&token)
                .json(&json!({"current_password": current, "new_password": new}))
                .send()
        };
        let r = change("not the password", "a brand new passphrase")
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{engine}: wrong current password");
        let r = change(ADMIN_PASSWORD, "short").await.unwrap();
        assert_eq!(r.status(), 400, "{engine}: policy");
        let r = change(ADMIN_PASSWORD, "a brand new passphrase")
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{engine}");
        assert_eq!(
            u.login("admin", ADMIN_PASSWORD).await.status,
            401,
            "{engine}: old password"
        );
        assert_eq!(
            u.login("admin", "a brand new passphrase").await.status,
            200,
            "{engine}: new password"
        );
        let r = u
            .post(
                "/v1/auth/refresh",
                json!({"refresh_token": session["refresh_token"]}),
            )
            .await;
        assert_eq!(r.status, 401, "{engine}: the earlier session ended");
    }
}
