//! A user-service in the test process on a fresh database, and the calls
//! the tests make to it.

use std::time::Duration;

use dialstack_common::config::Env;
use dialstack_common::service::Service;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The bootstrap admin's password.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A short random suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A URL of a fresh MariaDB database (created on first connect).
pub fn fresh_mysql_url() -> String {
    let server = std::env::var("DIALSTACK_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    format!("{server}/{}", unique("dstest_"))
}

/// A URL of a fresh SQLite database in a temporary folder.
pub fn fresh_sqlite_url() -> String {
    let dir = std::env::temp_dir().join(unique("dialstack-test-"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    format!("sqlite://{}/users.db", dir.display())
}

/// A new key-encryption key, as `openssl rand -base64 32` makes one.
pub fn random_kek() -> String {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    use base64::Engine as _;
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A user-service running in this process.
pub struct TestApp {
    /// Its base URL.
    pub url: String,
    /// A client for it.
    pub http: reqwest::Client,
    stop: CancellationToken,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts user-service on `database_url` with the bootstrap admin and
/// `extra` variables (later ones win); the error is the one its `main`
/// would print.
pub async fn try_spawn_app(database_url: &str, extra: &[(&str, &str)]) -> anyhow::Result<TestApp> {
    let events = format!("memory://{}", unique("users-"));
    let mut env = Env::from_pairs([
        ("DIALSTACK_DATABASE_URL", database_url),
        ("DIALSTACK_EVENTS_URL", events.as_str()),
        ("DIALSTACK_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("DIALSTACK_HTTP_ADDR", "127.0.0.1:0"),
        ("DIALSTACK_SHUTDOWN_GRACE_SECS", "1"),
    ]);
    for (k, v) in extra {
        env.set(*k, *v);
    }
    let config = user_service::Application::config(&env)?;
    let stop = CancellationToken::new();
    let app = user_service::Application::build(config, stop.clone()).await?;
    let url = format!("http://{}", app.local_addr());
    Ok(TestApp {
        url,
        http: reqwest::Client::new(),
        stop,
        running: tokio::spawn(app.run_until_stopped()),
    })
}

/// [`try_spawn_app`] that must succeed.
pub async fn spawn_app(database_url: &str, extra: &[(&str, &str)]) -> TestApp {
    try_spawn_app(database_url, extra)
        .await
        .unwrap_or_else(|e| panic!("user-service does not start: {e:#}"))
}

impl TestApp {
    /// Stops it and waits until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.running)
            .await
            .expect("user-service stops within 10 s")
            .expect("user-service task")
            .expect("user-service stops cleanly");
    }

    /// An access token of the bootstrap admin.
    pub async fn admin_token(&self) -> String {
        let r = self
            .http
            .post(format!("{}/v1/auth/login", self.url))
            .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "admin login");
        let body: Value = r.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// The status of `GET /v1/users/me` with `token`: 200 when user-service
    /// accepts the token's signature.
    pub async fn me(&self, token: &str) -> u16 {
        self.http
            .get(format!("{}/v1/users/me", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The published keys, kid to public key (`x`).
    pub async fn jwks(&self) -> Vec<(String, String)> {
        let v: Value = self
            .http
            .get(format!("{}/.well-known/jwks.json", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut keys: Vec<_> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["kid"].as_str().unwrap().to_owned(),
                    k["x"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        keys.sort();
        keys
    }

    /// Publishes a new signing key (`POST /v1/keys/rotate`); returns its kid.
    pub async fn rotate(&self, admin: &str) -> String {
        let r = self
            .http
            .post(format!("{}/v1/keys/rotate", self.url))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "key rotation");
        let body: Value = r.json().await.unwrap();
        body["kid"].as_str().unwrap().to_owned()
    }
}

/// The `kid` in a token's header.
pub fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    serde_json::from_slice::<Value>(&header).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every row of `signing_keys` as stored: kid and the raw `seed` column.
pub async fn stored_seeds(database_url: &str) -> Vec<(String, String)> {
    let db = dialstack_common::db::Db::connect(database_url)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT kid, seed FROM signing_keys ORDER BY kid")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let seeds = rows
        .iter()
        .map(|r| (sqlx::Row::get(r, 0), sqlx::Row::get(r, 1)))
        .collect();
    db.pool.close().await;
    seeds
}

/// Overwrites the stored seed of `kid`.
pub async fn store_seed(database_url: &str, kid: &str, seed: &str) {
    let db = dialstack_common::db::Db::connect(database_url)
        .await
        .unwrap();
    let done = sqlx::query("UPDATE signing_keys SET seed = ? WHERE kid = ?")
        .bind(seed)
        .bind(kid)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1, "{kid}");
    db.pool.close().await;
}
