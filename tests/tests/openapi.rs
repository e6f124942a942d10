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
