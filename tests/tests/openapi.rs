//! Every service's `/openapi.json` is a valid OpenAPI 3.1 document
//! (`openapi-spec-validator`, installed by `scripts/test-env.sh` into the
//! tools' virtual environment): query parameters are `in: query`, every
//! `{path}` parameter is declared, and a generated client or Swagger UI
//! reads them right. The validator missing is a failure, not a skip.

use std::path::PathBuf;
use std::process::Command;

fn validator() -> PathBuf {
    let tools = std::env::var("DIALSTACK_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/dialstack/tools")
        });
    let in_venv = tools.join("venv/bin/openapi-spec-validator");
    if in_venv.exists() {
        in_venv
    } else {
        PathBuf::from("openapi-spec-validator")
    }
}

#[test]
fn every_service_serves_a_valid_openapi_document() {
    let dir = dialstack_tests::procs::target_dir().join("openapi");
    std::fs::create_dir_all(&dir).unwrap();
    let docs = [
        ("user-service", user_service::http::openapi()),
        ("task-scheduler", task_scheduler::http::openapi()),
        ("media-processor", media_processor::http::openapi()),
        ("storage-service", storage_service::http::openapi()),
        ("monitor-service", monitor_service::http::openapi()),
    ];
    let mut failures = Vec::new();
    for (name, doc) in docs {
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{name}: {}",
            doc["openapi"]
        );
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        let out = Command::new(validator())
            .arg("--schema")
            .arg("3.1")
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!("openapi-spec-validator not found (scripts/test-env.sh installs it): {e}")
            });
        if !out.status.success() {
            failures.push(format!(
                "{name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn swagger_ui_dir() -> PathBuf {
    let tools = std::env::var("DIALSTACK_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/dialstack/tools")
        });
    let dir = tools.join("swagger-ui");
    assert!(
        dir.join("swagger-ui-bundle.js").exists(),
        "Swagger UI assets missing in {} (scripts/test-env.sh unpacks them)",
        dir.display()
    );
    dir
}

/// `/docs` is Swagger UI over the service's own document, from local
/// assets (no network): headless Chromium renders the operations. The
/// assets are served by name only; anything else under `/docs/` is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_renders_the_api_offline() {
    let dir = swagger_ui_dir();
    // Read once per process by the HTTP layer, before any service starts.
    std::env::set_var("DIALSTACK_SWAGGER_UI_DIR", &dir);
    let users =
        dialstack_tests::users::Users::start(&dialstack_tests::fresh_sqlite_url(), "memory://")
            .await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{}/docs", users.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("/docs/swagger-ui-bundle.js"));
    let js = http
        .get(format!("{}/docs/swagger-ui-bundle.js", users.url))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(js.headers()["content-type"], "text/javascript");
    for bad in [
        "../Cargo.toml",
        "LICENSE",
        "%2e%2e%2fetc%2fpasswd",
        "swagger-ui.css.map",
    ] {
        let r = http
            .get(format!("{}/docs/{bad}", users.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }
    let out = tokio::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=8000",
            "--dump-dom",
        ])
        .arg(format!("{}/docs", users.url))
        .kill_on_drop(true)
        .output()
        .await
        .expect("chromium runs (scripts/test-env.sh installs it)");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("swagger-ui"),
        "no Swagger UI: {}",
        &dom[..dom.len().min(2000)]
    );
    assert!(dom.contains("/v1/auth/token"), "operations not rendered");
}
