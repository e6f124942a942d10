//! Authentication costs: token verification per second (one core), the
//! latency the auth layer adds to a request (median and p99, same run), and
//! login latency with argon2id, alone and through a running user-service
//! under concurrent logins.
//!
//! `cargo bench -p user-service --bench auth`

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use dialstack_common::auth::{
    new_claims, require_auth, verify, Jwks, Keys, Role, SigningKey, StaticKeys,
};
use tower::ServiceExt;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let key = SigningKey::generate();
        let keys = Arc::new(StaticKeys::from_jwks(&Jwks {
            keys: vec![key.jwk()],
            ..Default::default()
        }));
        let token = key.sign(&new_claims("u1", Role::Agent, Duration::from_secs(900)));
        let now = dialstack_common::now_ms() / 1000;

        // Token verification, one core.
        let n = 50_000;
        for _ in 0..1_000 {
            verify(&token, keys.as_ref(), now).await.unwrap();
        }
        let mut rates = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..n {
                verify(&token, keys.as_ref(), now).await.unwrap();
            }
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        rates.sort_by(|a, b| a.total_cmp(b));
        println!(
            "token verification, signature checked every time: median {:.0}/s over 5 runs of {n} (min {:.0}, max {:.0})",
            rates[2], rates[0], rates[4]
        );
        let cache = dialstack_common::auth::VerifiedTokens::default();
        let mut cached = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..n {
                cache.verify(&token, keys.as_ref(), now).await.unwrap();
            }
            cached.push(n as f64 / t.elapsed().as_secs_f64());
        }
        cached.sort_by(|a, b| a.total_cmp(b));
        println!(
            "token verification, remembered token: median {:.0}/s over 5 runs of {n} (min {:.0}, max {:.0})",
            cached[2], cached[0], cached[4]
        );

        // The auth layer's added latency: the same handler with and without it,
        // interleaved so both see the same machine state.
        let plain = Router::new().route("/v1/x", get(|| async { "ok" }));
        let ks: Keys = keys.clone();
        let guarded = Router::new()
            .route("/v1/x", get(|| async { "ok" }))
            .route_layer(axum::middleware::from_fn_with_state(ks, require_auth));
        let mut with = Vec::new();
        let mut without = Vec::new();
        for i in 0..40_000 {
            let req = || {
                Request::get("/v1/x")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap()
            };
            let t = Instant::now();
            let r = plain.clone().oneshot(req()).await.unwrap();
            let d_plain = t.elapsed();
            let t = Instant::now();
            let g = guarded.clone().oneshot(req()).await.unwrap();
            let d_guarded = t.elapsed();
            assert!(r.status().is_success() && g.status().is_success());
            if i >= 2_000 {
                without.push(d_plain);
                with.push(d_guarded);
            }
        }
        with.sort();
        without.sort();
        for (name, p) in [("median", 0.5), ("p99", 0.99)] {
            let a = percentile(&with, p);
            let b = percentile(&without, p);
            println!(
                "request {name}: {:.1} µs with auth, {:.1} µs without, auth adds {:.1} µs",
                a.as_secs_f64() * 1e6,
                b.as_secs_f64() * 1e6,
                (a.as_secs_f64() - b.as_secs_f64()) * 1e6
            );
        }

        // Login: argon2id verification of the right password (the dominant cost).
        let hash = user_service::domain::hash_password("correct horse battery staple")
            .await
            .unwrap();
        let mut times = Vec::new();
        for _ in 0..21 {
            let t = Instant::now();
            assert!(user_service::domain::verify_password_now(
                "correct horse battery staple",
                Some(&hash)
            ));
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "argon2id password check: median {:.1} ms, max {:.1} ms (21 runs)",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            times[20].as_secs_f64() * 1e3
        );
    });
    login_under_load();
}

/// Logins through a real user-service (SQLite, its own HTTP listener) with
/// `CLIENTS` concurrent clients: latency percentiles and logins per second.
fn login_under_load() {
    use dialstack_common::service::Service as _;
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 25;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("dialstack-bench-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = format!("sqlite://{}/users.db", dir.display());
        let env = dialstack_common::config::Env::from_pairs([
            ("DIALSTACK_DATABASE_URL", db.as_str()),
            ("DIALSTACK_EVENTS_URL", "memory://bench"),
            ("DIALSTACK_HTTP_ADDR", "127.0.0.1:0"),
            ("DIALSTACK_ADMIN_PASSWORD", "correct horse battery staple"),
            ("DIALSTACK_LOG_FORMAT", "json"),
            ("RUST_LOG", "warn"),
        ]);
        let stop = tokio_util::sync::CancellationToken::new();
        let config = user_service::Application::config(&env).unwrap();
        let app = user_service::Application::build(config, stop.clone())
            .await
            .unwrap();
        let url = format!("http://{}/v1/auth/login", app.local_addr());
        let server = tokio::spawn(app.run_until_stopped());
        let http = reqwest::Client::new();
        let body = serde_json::json!({"username": "admin", "password": "correct horse battery staple"});
        let t = Instant::now();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (http, url, body) = (http.clone(), url.clone(), body.clone());
                tokio::spawn(async move {
                    let mut times = Vec::with_capacity(PER_CLIENT);
                    for _ in 0..PER_CLIENT {
                        let t = Instant::now();
                        let r = http.post(&url).json(&body).send().await.unwrap();
                        assert_eq!(r.status(), 200);
                        times.push(t.elapsed());
                    }
                    times
                })
            })
            .collect();
        let mut times = Vec::new();
        for c in clients {
            times.extend(c.await.unwrap());
        }
        let wall = t.elapsed();
        times.sort();
        println!(
            "login over HTTP, {CLIENTS} concurrent clients, {} logins: p50 {:.1} ms, p99 {:.1} ms, {:.1} logins/s",
            times.len(),
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            times.len() as f64 / wall.as_secs_f64()
        );
        stop.cancel();
        let _ = server.await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}
