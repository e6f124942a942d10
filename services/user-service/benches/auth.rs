//! Authentication costs: token verification per second (one core), the
//! latency the auth layer adds to a request (median and p99, same run), and
//! login latency with argon2id.
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
            assert!(
                user_service::domain::verify_password(
                    "correct horse battery staple",
                    Some(hash.clone())
                )
                .await
            );
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "argon2id password check: median {:.1} ms, max {:.1} ms (21 runs)",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            times[20].as_secs_f64() * 1e3
        );
    });
}
