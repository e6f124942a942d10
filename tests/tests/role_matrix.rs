//! The role matrix: every route of every service, declared with its roles,
//! called with no token and with a token of each role. Allowed roles get past
//! authorisation (anything but 401/403), others get 403, and no token gets
//! 401. Every route in a service's OpenAPI document must be declared, so a new
//! route without a declaration fails here.

use std::collections::{BTreeSet, HashMap};

use dialstack_common::auth::{Role, RouteRoles};
use dialstack_tests::procs::{dialstack_up, log_dir, login};
use dialstack_tests::unique;
use dialstack_tests::users::Users;
use serde_json::{json, Value};

fn declared() -> Vec<(&'static str, &'static [RouteRoles])> {
    vec![
        ("user-service", user_service::http::ROUTES),
        ("user-service", user_service::agents::ROUTES),
        ("user-service", user_service::users::ROUTES),
        ("task-scheduler", task_scheduler::http::ROUTES),
        ("storage-service", storage_service::http::ROUTES),
        ("monitor-service", monitor_service::http::ROUTES),
        ("media-processor", media_processor::http::ROUTES),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_gives_each_role_exactly_its_declared_access() {
    let data = log_dir("role_matrix").join(unique("data-"));
    let (_suite, urls) = dialstack_up(&data, "sim://?answer=1&ring_ms=20").await;
    let http = reqwest::Client::new();
    let admin_password = std::fs::read_to_string(data.join("admin-password")).unwrap();
    let service_password = std::fs::read_to_string(data.join("service-password")).unwrap();
    let users = &urls["user-service"];
    let admin = login(users, "admin", admin_password.trim()).await;
    let mut tokens: HashMap<Role, String> = HashMap::new();
    tokens.insert(Role::Admin, admin.clone());
    // A service account takes client credentials, not a login.
    let service = Users::client_token_at(
        &http,
        users,
        user_service::SERVICE_ACCOUNT,
        service_password.trim(),
    )
    .await;
    assert_eq!(service.status, 200, "{}", service.body);
    tokens.insert(
        Role::Service,
        service.body["access_token"].as_str().unwrap().to_owned(),
    );
    for (name, role) in [
        ("sam.supervisor", Role::Supervisor),
        ("ann.agent", Role::Agent),
    ] {
        let password = format!("{name} has a long password");
        let r = http
            .post(format!("{users}/v1/users"))
            .bearer_auth(&admin)
            .json(&json!({"username": name, "password": password, "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        tokens.insert(role, login(users, name, &password).await);
    }

    // Declared = documented, per service.
    let mut by_service: HashMap<&str, BTreeSet<(String, String)>> = HashMap::new();
    for (service, routes) in declared() {
        for r in routes {
            by_service
                .entry(service)
                .or_default()
                .insert((r.method.to_owned(), r.path.to_owned()));
        }
    }
    for (service, routes) in &by_service {
        let doc: Value = http
            .get(format!("{}/openapi.json", urls[*service]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        assert_eq!(
            &documented, routes,
            "{service}: documented routes must all declare their roles"
        );
    }

    let mut checked = 0;
    for (service, routes) in declared() {
        for r in routes {
            let path = r
                .path
                .replace("{id}", "00000000-0000-7000-8000-000000000000");
            let url = format!("{}{path}", urls[service]);
            let request = |token: Option<&String>| {
                let mut req = http.request(r.method.parse().unwrap(), &url);
                if r.method != "GET" {
                    req = req.json(&json!({}));
                }
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                req.send()
            };
            let anonymous = request(None).await.unwrap();
            let status = anonymous.status().as_u16();
            if r.roles.is_empty() {
                assert!(
                    status != 401 && status != 403,
                    "{} {} is public, got {status}",
                    r.method,
                    r.path
                );
                continue;
            }
            assert_eq!(status, 401, "{} {} without a token", r.method, r.path);
            for role in [Role::Admin, Role::Supervisor, Role::Agent, Role::Service] {
                let resp = request(Some(&tokens[&role])).await.unwrap();
                let status = resp.status().as_u16();
                if r.roles.contains(&role) {
                    assert!(
                        status != 401 && status != 403,
                        "{} {} as {role:?}: allowed, got {status}",
                        r.method,
                        r.path
                    );
                } else {
                    assert_eq!(
                        status, 403,
                        "{} {} as {role:?}: not allowed",
                        r.method, r.path
                    );
                    let body: Value = resp.json().await.unwrap();
                    assert_eq!(body["code"], "forbidden");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 60, "{checked} route/role pairs checked");
}
