//! The S3 server of the tests: `s3s-fs` on 127.0.0.1:9000, started by
//! `scripts/test-env.sh` with the fixed credentials below.
//!
//! Buckets: `object_store` cannot create buckets and the server refuses
//! unsigned requests, but s3s-fs keeps bucket `b` as the folder `<root>/b`,
//! so [`fresh_bucket`] creates a bucket by creating that folder (the tests
//! run on the machine the server runs on). The root is
//! `DIALSTACK_TEST_S3_ROOT`, default `/tmp/dialstack-s3`, as in test-env.sh.

use std::path::PathBuf;

/// The server, unless `DIALSTACK_TEST_S3` names another.
pub const ENDPOINT: &str = "http://127.0.0.1:9000";
/// Access key id s3s-fs is started with.
pub const ACCESS_KEY: &str = "dialstack-test";
/// Secret key s3s-fs is started with.
pub const SECRET_KEY: &str = "dialstack-test-secret";
/// Where s3s-fs keeps its buckets, unless `DIALSTACK_TEST_S3_ROOT` says otherwise.
pub const DEFAULT_ROOT: &str = "/tmp/dialstack-s3";

/// The endpoint URL.
pub fn endpoint() -> String {
    std::env::var("DIALSTACK_TEST_S3").unwrap_or_else(|_| ENDPOINT.into())
}

/// The server's data folder.
pub fn root() -> PathBuf {
    std::env::var("DIALSTACK_TEST_S3_ROOT")
        .unwrap_or_else(|_| DEFAULT_ROOT.into())
        .into()
}

/// A bucket of this test's own on the S3 server.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Its name.
    pub name: String,
    /// `s3://<name>/recordings`: the `DIALSTACK_RECORDINGS_URL` to use.
    pub url: String,
}

impl Bucket {
    /// The variables that point a service's recording store at this bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DIALSTACK_RECORDINGS_URL".into(), self.url.clone()),
            ("DIALSTACK_S3_ENDPOINT".into(), endpoint()),
            ("DIALSTACK_S3_REGION".into(), "us-east-1".into()),
            ("DIALSTACK_S3_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("DIALSTACK_S3_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }

    /// The folder s3s-fs keeps the bucket in.
    pub fn dir(&self) -> PathBuf {
        root().join(&self.name)
    }
}

/// Creates a random bucket; panics (never skips) when the S3 server does
/// not answer.
pub fn fresh_bucket() -> Bucket {
    let addr = endpoint();
    let hostport = addr
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    if let Err(e) = std::net::TcpStream::connect(hostport) {
        panic!("no S3 server at {addr} ({e}): run scripts/test-env.sh");
    }
    let name = crate::unique("dstest-");
    let dir = root().join(&name);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating bucket folder {}: {e}", dir.display()));
    Bucket {
        url: format!("s3://{name}/recordings"),
        name,
    }
}
