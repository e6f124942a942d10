//! user-service sessions on SQLite and on MariaDB: refresh-token rotation and
//! reuse detection, logout, the per-account brute-force limit, and the audit
//! log. Each case runs a real user-service on a free port.

use std::time::Duration;

use dialstack_tests::{both_databases, eventually, in_process, InProcess};
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "correct horse battery staple";
const SERVICE_PASSWORD: &str = "service account secret 42";

/// A user-service in this process.
struct Users(InProcess);

impl std::ops::Deref for Users {
    type Target = InProcess;
    fn deref(&self) -> &InProcess {
        &self.0
    }
}

async fn users(database_url: &str) -> Users {
    Users(
        in_process::<user_service::Application>(&[
            ("DIALSTACK_DATABASE_URL", database_url),
            ("DIALSTACK_EVENTS_URL", "memory://auth-tests"),
            ("DIALSTACK_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("DIALSTACK_SERVICE_PASSWORD", SERVICE_PASSWORD),
        ])
        .await,
    )
}

impl Users {
    async fn post(&self, path: &str, body: Value) -> (u16, Value, Option<String>) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, r.json().await.unwrap_or(Value::Null), retry)
    }

    async fn login(&self, username: &str, password: &str) -> (u16, Value, Option<String>) {
        self.post(
            "/v1/auth/login",
            json!({"username": username, "password": password}),
        )
        .await
    }

    async fn audit(&self, token: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/v1/audit?limit=1000", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_session() {
    for (engine, url) in both_databases() {
        let u = users(&url).await;
        let (status, first, _) = u.login("admin", ADMIN_PASSWORD).await;
        assert_eq!(status, 200, "{engine}");
        let r1 = first["refresh_token"].as_str().unwrap().to_owned();
        let (status, second, _) = u
            .post("/v1/auth/refresh", json!({"refresh_token": r1}))
            .await;
        assert_eq!(status, 200, "{engine}: rotation");
        let r2 = second["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(r1, r2, "{engine}");
        assert!(
            second["access_token"].as_str().unwrap().split('.').count() == 3,
            "{engine}"
        );
        // The old token again: reuse, the whole family is revoked...
        let (status, body, _) = u
            .post("/v1/auth/refresh", json!({"refresh_token": r1}))
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{engine}"
        );
        // ...so the newest token of the family no longer works either.
        let (status, _, _) = u
            .post("/v1/auth/refresh", json!({"refresh_token": r2}))
            .await;
        assert_eq!(status, 401, "{engine}: family revoked");
        let (status, _, _) = u
            .post("/v1/auth/refresh", json!({"refresh_token": "made-up"}))
            .await;
        assert_eq!(status, 401, "{engine}");
        let (status, body, _) = u.post("/v1/auth/refresh", json!({"token": 1})).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_json")),
            "{engine}"
        );

        let token = first["access_token"].as_str().unwrap();
        let (status, log) = u.audit(token).await;
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

#[tokio::test]
async fn logout_ends_the_session_and_the_audit_log_is_for_admins() {
    for (engine, url) in both_databases() {
        let u = users(&url).await;
        let (_, session, _) = u.login("admin", ADMIN_PASSWORD).await;
        let r = session["refresh_token"].as_str().unwrap();
        let resp = u
            .http
            .post(format!("{}/v1/auth/logout", u.url))
            .json(&json!({"refresh_token": r}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "{engine}");
        let (status, _, _) = u
            .post("/v1/auth/refresh", json!({"refresh_token": r}))
            .await;
        assert_eq!(status, 401, "{engine}: logged out");
        let (status, service, _) = u
            .login(user_service::SERVICE_ACCOUNT, SERVICE_PASSWORD)
            .await;
        assert_eq!(status, 200, "{engine}");
        let (status, body) = u.audit(service["access_token"].as_str().unwrap()).await;
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
        let (status, body, _) = u
            .post(
                "/v1/auth/token",
                grant(user_service::SERVICE_ACCOUNT, SERVICE_PASSWORD),
            )
            .await;
        assert_eq!(status, 200, "{engine}: {body}");
        assert!(
            body.get("refresh_token").is_none(),
            "{engine}: no refresh token"
        );
        let token = body["access_token"].as_str().unwrap();
        let me: Value = u
            .http
            .get(format!("{}/v1/users/me", u.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["role"], "service", "{engine}");
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
            let (status, b, _) = u.post("/v1/auth/token", body.clone()).await;
            assert_eq!(status, want, "{engine}: {body} -> {b}");
            assert!(b["request_id"].as_str().is_some(), "{engine}: {b}");
        }
        let admin = u.login("admin", ADMIN_PASSWORD).await.1["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, audit) = u.audit(&admin).await;
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
async fn the_101st_failed_login_in_an_hour_is_refused_even_with_the_right_password() {
    for (engine, url) in both_databases() {
        let u = users(&url).await;
        for i in 0..100 {
            let (status, _, _) = u.login("admin", &format!("wrong password {i}")).await;
            assert_eq!(status, 401, "{engine}: failure {i}");
        }
        let (status, body, retry) = u.login("admin", "wrong password again").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (429, Some("rate_limited")),
            "{engine}"
        );
        let retry: u64 = retry.expect("Retry-After").parse().unwrap();
        assert!(
            (3500..=3601).contains(&retry),
            "{engine}: about an hour, got {retry}"
        );
        let (status, _, _) = u.login("admin", ADMIN_PASSWORD).await;
        assert_eq!(
            status, 429,
            "{engine}: the right password is refused too while limited"
        );
        // Another account from the same address is not locked by it.
        let (status, _, _) = u
            .login(user_service::SERVICE_ACCOUNT, SERVICE_PASSWORD)
            .await;
        assert_eq!(status, 200, "{engine}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn one_client_address_is_limited_across_accounts() {
    for (engine, url) in both_databases() {
        let u = Users(
            in_process::<user_service::Application>(&[
                ("DIALSTACK_DATABASE_URL", url.as_str()),
                ("DIALSTACK_EVENTS_URL", "memory://auth-tests"),
                ("DIALSTACK_ADMIN_PASSWORD", ADMIN_PASSWORD),
                ("DIALSTACK_LOGIN_IP_FAILURES_PER_HOUR", "5"),
            ])
            .await,
        );
        // Password spraying: one guess each at many accounts.
        for i in 0..5 {
            let (status, _, _) = u.login(&format!("user{i}"), "Summer2026!").await;
            assert_eq!(status, 401, "{engine}: guess {i}");
        }
        let (status, body, retry) = u.login("user5", "Summer2026!").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (429, Some("rate_limited")),
            "{engine}"
        );
        assert!(retry.is_some(), "{engine}: Retry-After");
        let (status, _, _) = u.login("admin", ADMIN_PASSWORD).await;
        assert_eq!(status, 429, "{engine}: the whole address waits");
        let (status, _, _) = u
            .post(
                "/v1/auth/token",
                json!({"grant_type": "client_credentials", "client_id": "svc", "client_secret": "x"}),
            )
            .await;
        assert_eq!(status, 429, "{engine}: client credentials count too");
    }
    let bad = user_service::Config::from_env(&dialstack_common::config::Env::from_pairs([
        ("DIALSTACK_DATABASE_URL", "sqlite://x.db"),
        ("DIALSTACK_EVENTS_URL", "memory://"),
        ("DIALSTACK_LOGIN_IP_FAILURES_PER_HOUR", "0"),
    ]))
    .unwrap_err();
    assert_eq!(bad.var, "DIALSTACK_LOGIN_IP_FAILURES_PER_HOUR");
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
    let users = Users(
        in_process::<user_service::Application>(&[
            ("DIALSTACK_DATABASE_URL", url.as_str()),
            ("DIALSTACK_EVENTS_URL", "memory://rotation-tests"),
            ("DIALSTACK_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("DIALSTACK_ACCESS_TOKEN_TTL_SECS", "1"),
            ("DIALSTACK_KEY_PUBLISH_DELAY_SECS", "2"),
        ])
        .await,
    );
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
    let (_, first, _) = u.login("admin", ADMIN_PASSWORD).await;
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
    let (_, early, _) = u.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(
        kid_of(early["access_token"].as_str().unwrap()),
        old_kid,
        "{engine}: not signing yet"
    );

    eventually(
        &format!("{engine}: new key signs"),
        Duration::from_secs(10),
        || async {
            let (_, t, _) = u.login("admin", ADMIN_PASSWORD).await;
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
        let (_, session, _) = u.login("admin", ADMIN_PASSWORD).await;
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
            u.login("admin", ADMIN_PASSWORD).await.0,
            401,
            "{engine}: old password"
        );
        assert_eq!(
            u.login("admin", "a brand new passphrase").await.0,
            200,
            "{engine}: new password"
        );
        let (status, _, _) = u
            .post(
                "/v1/auth/refresh",
                json!({"refresh_token": session["refresh_token"]}),
            )
            .await;
        assert_eq!(status, 401, "{engine}: the earlier session ended");
    }
}
