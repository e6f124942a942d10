//! The recording store (DESIGN §4): call recordings are objects under
//! `DIALSTACK_RECORDINGS_URL`, either a folder (`file:///abs/path`, the
//! embedded default `./data/recordings`, or an NFS mount) or an S3 bucket
//! (`s3://bucket/prefix`: AWS S3, MinIO, Ceph RGW, s3s-fs). Both go through
//! the `object_store` crate; nothing here signs a request by hand.
//!
//! Variables (read from the passed-in [`Env`]):
//! - `DIALSTACK_RECORDINGS_URL`: `file:///...` or `s3://bucket[/prefix]`;
//!   unset means `file://` + the absolute path of `./data/recordings`;
//! - `DIALSTACK_S3_ENDPOINT` (`http://127.0.0.1:9000`; unset: AWS), then
//!   requests are path-style and `http://` is allowed;
//! - `DIALSTACK_S3_REGION` (default `us-east-1`);
//! - `DIALSTACK_S3_ACCESS_KEY_ID` and `DIALSTACK_S3_SECRET_ACCESS_KEY`,
//!   both or neither (neither: the instance's credentials on AWS).
//!
//! Objects are named by *keys*: `/`-separated segments of letters, digits
//! and `-_.`, no segment empty or starting with a dot, at most 512 bytes
//! (media-processor uses `{campaign_id}/{call_id}.wav`). Events and
//! databases carry the full URL ([`RecordingStore::url_for`]); a URL read
//! back is accepted only when it lies under this store's own URL, so a
//! forged URL in an event or a row never reads a file elsewhere.
//!
//! Uploads up to [`SINGLE_PUT_MAX`] are one `PUT` of the file read into
//! memory (a stereo 8 kHz 16-bit recording is about 1.9 MB per minute, so
//! that is over half an hour of call); larger files are sent in
//! [`PART_SIZE`] parts (S3 multipart upload), so memory stays bounded.
//!
//! Because a URL must lie under the store's own URL, media-processor and
//! storage-service must be given the same `DIALSTACK_RECORDINGS_URL`.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::config::{ConfigError, Env};

/// The variable naming the store.
pub const URL_VAR: &str = "DIALSTACK_RECORDINGS_URL";
/// Where recordings go when [`URL_VAR`] is unset (DESIGN §5).
pub const DEFAULT_DIR: &str = "./data/recordings";
/// Files up to this size are uploaded with one `PUT` (read into memory).
pub const SINGLE_PUT_MAX: u64 = 64 * 1024 * 1024;
/// Part size of a multipart upload (S3 wants at least 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Longest key.
pub const MAX_KEY_LEN: usize = 512;
/// The object the start-up probe writes and removes.
const PROBE_KEY: &str = "dialstack-start-up-check";

/// A failure of the recording store.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The key is not a safe object name.
    #[error("bad recording key {key:?}: {reason}")]
    BadKey {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A URL that does not lie under this store's URL.
    #[error("recording url {0:?} is not in this store")]
    Foreign(String),
    /// No such object.
    #[error("recording not found")]
    NotFound,
    /// Reading the local file to upload failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The store refused or did not answer.
    #[error("recording store: {0}")]
    Store(#[source] object_store::Error),
}

impl From<object_store::Error> for RecordingError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => Self::NotFound,
            e => Self::Store(e),
        }
    }
}

/// A body being read from the store.
pub struct RecordingBody {
    /// The bytes of `range`, in order.
    pub stream: BoxStream<'static, Result<Bytes, RecordingError>>,
    /// Which bytes of the object the stream carries.
    pub range: Range<u64>,
    /// The object's whole size.
    pub total: u64,
}

impl fmt::Debug for RecordingBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingBody")
            .field("range", &self.range)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// Where recordings are kept. Cheap to clone.
#[derive(Clone)]
pub struct RecordingStore {
    store: Arc<dyn ObjectStore>,
    /// `file:///abs/path` or `s3://bucket[/prefix]`, without a trailing `/`.
    base: String,
    /// Key prefix inside the bucket (S3), without slashes at either end.
    prefix: Option<String>,
}

impl fmt::Debug for RecordingStore {
    // The S3 client's configuration holds the secret key: only the URL is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingStore")
            .field("url", &self.base)
            .finish_non_exhaustive()
    }
}

impl RecordingStore {
    /// The store named by `DIALSTACK_RECORDINGS_URL` (and `DIALSTACK_S3_*`
    /// for `s3://`). A `file://` folder is created when missing. Errors name
    /// the variable at fault.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        match env.get(URL_VAR) {
            Some(url) => Self::from_url(url, env),
            None => {
                let dir = std::env::current_dir()
                    .map(|d| d.join(DEFAULT_DIR))
                    .map_err(|e| ConfigError::new(URL_VAR, format!("unset, and no working directory for the default {DEFAULT_DIR}: {e}")))?;
                Self::local(&dir)
            }
        }
    }

    /// The store at `url`, reading `DIALSTACK_S3_*` from `env` for `s3://`.
    pub fn from_url(url: &str, env: &Env) -> Result<Self, ConfigError> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(ConfigError::new(
                    URL_VAR,
                    format!("{url:?}: a file URL needs an absolute path (file:///...)"),
                ));
            }
            if path.contains(['?', '#']) || path.contains("%") {
                return Err(ConfigError::new(
                    URL_VAR,
                    format!("{url:?}: the path may not contain ?, # or %"),
                ));
            }
            Self::local(Path::new(path))
        } else if let Some(rest) = url.strip_prefix("s3://") {
            Self::s3(url, rest, env)
        } else {
            Err(ConfigError::new(
                URL_VAR,
                format!("{url:?} must start with file:/// or s3://"),
            ))
        }
    }

    fn local(dir: &Path) -> Result<Self, ConfigError> {
        let bad =
            |e: &dyn fmt::Display| ConfigError::new(URL_VAR, format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(|e| bad(&e))?;
        let root = std::fs::canonicalize(dir).map_err(|e| bad(&e))?;
        let root_str = root
            .to_str()
            .ok_or_else(|| bad(&"the path is not UTF-8"))?
            .trim_end_matches('/')
            .to_owned();
        let store =
            object_store::local::LocalFileSystem::new_with_prefix(&root).map_err(|e| bad(&e))?;
        Ok(Self {
            store: Arc::new(store),
            base: format!("file://{root_str}"),
            prefix: None,
        })
    }

    fn s3(url: &str, rest: &str, env: &Env) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::new(URL_VAR, format!("{url:?}: {why}"));
        let rest = rest.trim_end_matches('/');
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, Some(p)),
            None => (rest, None),
        };
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3-63 lowercase letters, digits, - and .",
            ));
        }
        if let Some(p) = prefix {
            check_key(p).map_err(|_| {
                bad("the prefix must be /-separated segments of letters, digits and -_. (no empty or dot-led segment)")
            })?;
        }
        let region = env.or("DIALSTACK_S3_REGION", "us-east-1");
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(ConfigError::new(
                "DIALSTACK_S3_REGION",
                format!("{region:?} is not a region name"),
            ));
        }
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(region)
            .with_retry(object_store::RetryConfig {
                backoff: Default::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
            });
        let mut client = object_store::ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(300));
        // An https endpoint signed by a private CA: DIALSTACK_CA_FILE's
        // certificates are trusted besides the system's.
        if let Some(ca) = crate::tls::TlsConfig::from_env(env)?.ca_file() {
            let pem = crate::tls::read_ca_file(ca)
                .map_err(|e| ConfigError::new(crate::tls::CA_FILE_VAR, e))?;
            for cert in object_store::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| ConfigError::new(crate::tls::CA_FILE_VAR, e))?
            {
                client = client.with_root_certificate(cert);
            }
        }
        if let Some(endpoint) = env.get("DIALSTACK_S3_ENDPOINT") {
            crate::config::check_scheme(
                "DIALSTACK_S3_ENDPOINT",
                endpoint,
                &["http://", "https://"],
            )?;
            client = client.with_allow_http(endpoint.starts_with("http://"));
            builder = builder
                .with_endpoint(endpoint.trim_end_matches('/'))
                .with_virtual_hosted_style_request(false);
        }
        match (
            env.get("DIALSTACK_S3_ACCESS_KEY_ID"),
            env.get("DIALSTACK_S3_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "DIALSTACK_S3_SECRET_ACCESS_KEY",
                    "is required with DIALSTACK_S3_ACCESS_KEY_ID",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "DIALSTACK_S3_ACCESS_KEY_ID",
                    "is required with DIALSTACK_S3_SECRET_ACCESS_KEY",
                ))
            }
        }
        let store = builder
            .with_client_options(client)
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            base: format!("s3://{rest}"),
            prefix: prefix.map(str::to_owned),
        })
    }

    /// This store's URL (`file:///...` or `s3://bucket[/prefix]`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The URL of `key`, as it goes into `call.recording.ready` and the
    /// database. `key` should be valid ([`check_key`]); the operations
    /// refuse it otherwise.
    pub fn url_for(&self, key: &str) -> String {
        format!("{}/{}", self.base, key.trim_start_matches('/'))
    }

    /// The key of `url_or_key`: a URL must lie under this store's URL.
    pub fn key_of<'a>(&self, url_or_key: &'a str) -> Result<&'a str, RecordingError> {
        let key = if url_or_key.starts_with("file:") || url_or_key.starts_with("s3:") {
            url_or_key
                .strip_prefix(self.base.as_str())
                .and_then(|k| k.strip_prefix('/'))
                .ok_or_else(|| RecordingError::Foreign(url_or_key.to_owned()))?
        } else {
            url_or_key
        };
        check_key(key)?;
        Ok(key)
    }

    /// Whether `url` names an object of this store (a valid key under its URL).
    pub fn owns(&self, url: &str) -> bool {
        (url.starts_with("file:") || url.starts_with("s3:")) && self.key_of(url).is_ok()
    }

    fn location(&self, url_or_key: &str) -> Result<ObjectPath, RecordingError> {
        let key = self.key_of(url_or_key)?;
        let full = match &self.prefix {
            Some(p) => format!("{p}/{key}"),
            None => key.to_owned(),
        };
        ObjectPath::parse(&full).map_err(|_| RecordingError::BadKey {
            key: key.to_owned(),
            reason: "not an object path",
        })
    }

    /// Uploads the file at `local` as `key`; returns its size. One `PUT` up
    /// to [`SINGLE_PUT_MAX`], a multipart upload of [`PART_SIZE`] parts
    /// beyond. An object already at `key` is replaced (uploads are retried).
    pub async fn put_file(&self, key: &str, local: &Path) -> Result<u64, RecordingError> {
        let location = self.location(key)?;
        let io = |source| RecordingError::Io {
            path: local.display().to_string(),
            source,
        };
        let size = tokio::fs::metadata(local).await.map_err(io)?.len();
        if size <= SINGLE_PUT_MAX {
            let data = tokio::fs::read(local).await.map_err(io)?;
            let n = data.len() as u64;
            self.store.put(&location, PutPayload::from(data)).await?;
            return Ok(n);
        }
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(local).await.map_err(io)?;
        let upload = self.store.put_multipart(&location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; PART_SIZE];
        let mut total = 0u64;
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io(e));
                }
            };
            if let Err(e) = writer.wait_for_capacity(4).await {
                let _ = writer.abort().await;
                return Err(e.into());
            }
            writer.write(&buf[..n]);
            total += n as u64;
        }
        writer.finish().await?;
        Ok(total)
    }

    /// Uploads `data` as `key` with one `PUT`.
    pub async fn put_bytes(&self, key: &str, data: Bytes) -> Result<(), RecordingError> {
        let location = self.location(key)?;
        self.store.put(&location, PutPayload::from(data)).await?;
        Ok(())
    }

    /// Reads `range` of the object (all of it when `None`), streaming. A
    /// range that ends past the object is cut at its end; one that starts
    /// at or past the end, or is empty, is an error: callers check against
    /// [`RecordingStore::head`] first.
    pub async fn get_range(
        &self,
        url_or_key: &str,
        range: Option<Range<u64>>,
    ) -> Result<RecordingBody, RecordingError> {
        let location = self.location(url_or_key)?;
        let got = self
            .store
            .get_opts(
                &location,
                GetOptions {
                    range: range.map(GetRange::Bounded),
                    ..Default::default()
                },
            )
            .await?;
        let range = got.range.clone();
        let total = got.meta.size;
        Ok(RecordingBody {
            stream: got.into_stream().map_err(RecordingError::from).boxed(),
            range,
            total,
        })
    }

    /// The whole object in memory (tests, small files).
    pub async fn get_bytes(&self, url_or_key: &str) -> Result<Bytes, RecordingError> {
        let body = self.get_range(url_or_key, None).await?;
        let parts: Vec<Bytes> = body.stream.try_collect().await?;
        Ok(parts.concat().into())
    }

    /// The object's size.
    pub async fn head(&self, url_or_key: &str) -> Result<u64, RecordingError> {
        let location = self.location(url_or_key)?;
        Ok(self.store.head(&location).await?.size)
    }

    /// Deletes the object; deleting one that is not there succeeds (a
    /// retried sweep).
    pub async fn delete(&self, url_or_key: &str) -> Result<(), RecordingError> {
        let location = self.location(url_or_key)?;
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(RecordingError::Store(e)),
        }
    }

    /// The start-up probe: writes, reads back and deletes a small object, so
    /// a wrong URL, bucket or credential stops the service at start.
    pub async fn check(&self) -> Result<(), RecordingError> {
        let marker = Bytes::from_static(b"dialstack start-up check\n");
        self.put_bytes(PROBE_KEY, marker.clone()).await?;
        let size = self.head(PROBE_KEY).await?;
        if size != marker.len() as u64 {
            return Err(RecordingError::Store(object_store::Error::Generic {
                store: "recordings",
                source: format!(
                    "probe object reads back {size} bytes, wrote {}",
                    marker.len()
                )
                .into(),
            }));
        }
        self.delete(PROBE_KEY).await
    }
}

/// Checks a key: 1-512 bytes of `/`-separated segments made of letters,
/// digits and `-_.`, none empty or starting with a dot (so no `..`).
pub fn check_key(key: &str) -> Result<(), RecordingError> {
    let bad = |reason| {
        Err(RecordingError::BadKey {
            key: key.chars().take(80).collect(),
            reason,
        })
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return bad("must be 1-512 bytes");
    }
    for seg in key.split('/') {
        if seg.is_empty() {
            return bad("empty segment");
        }
        if seg.starts_with('.') {
            return bad("a segment may not start with a dot");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return bad("only letters, digits, -_. and / are allowed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("dialstack-recordings-{}", uuid::Uuid::new_v4()))
    }

    fn file_store() -> (RecordingStore, std::path::PathBuf) {
        let dir = temp_dir();
        let env = Env::from_pairs([(URL_VAR, format!("file://{}/store", dir.display()))]);
        (RecordingStore::from_env(&env).unwrap(), dir)
    }

    #[test]
    fn keys_are_safe_names() {
        for ok in ["a.wav", "camp-1/call_2.wav", "x/y/z"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(513);
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "..",
            "a/../b",
            ".hidden",
            "a/.b",
            "a b",
            "a\\b",
            "a%2e",
            "é",
            long.as_str(),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_urls_name_the_variable() {
        for url in [
            "ftp://x",
            "file://relative/path",
            "s3://",
            "s3://UPPER",
            "s3://ok-bucket/../x",
            "s3://ok-bucket/a//b",
            "/just/a/path",
        ] {
            let err = RecordingStore::from_env(&Env::from_pairs([(URL_VAR, url)])).unwrap_err();
            assert_eq!(err.var, URL_VAR, "{url}");
            assert!(err.to_string().contains(URL_VAR), "{err}");
        }
        let err = RecordingStore::from_env(&Env::from_pairs([
            (URL_VAR, "s3://bucket"),
            ("DIALSTACK_S3_ENDPOINT", "127.0.0.1:9000"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "DIALSTACK_S3_ENDPOINT");
        let err = RecordingStore::from_env(&Env::from_pairs([
            (URL_VAR, "s3://bucket"),
            ("DIALSTACK_S3_ACCESS_KEY_ID", "id"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "DIALSTACK_S3_SECRET_ACCESS_KEY");
    }

    #[test]
    fn s3_urls_carry_the_prefix_and_hide_the_secret() {
        let store = RecordingStore::from_env(&Env::from_pairs([
            (URL_VAR, "s3://recordings/prod/eu/"),
            ("DIALSTACK_S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("DIALSTACK_S3_ACCESS_KEY_ID", "id"),
            ("DIALSTACK_S3_SECRET_ACCESS_KEY", "very-secret"),
        ]))
        .unwrap();
        assert_eq!(store.base_url(), "s3://recordings/prod/eu");
        assert_eq!(store.url_for("c/1.wav"), "s3://recordings/prod/eu/c/1.wav");
        assert_eq!(
            store.key_of("s3://recordings/prod/eu/c/1.wav").unwrap(),
            "c/1.wav"
        );
        assert!(store.key_of("s3://recordings/prod/other/c/1.wav").is_err());
        assert!(store.key_of("s3://recordings/prod/eu2/c.wav").is_err());
        assert!(!format!("{store:?}").contains("very-secret"));
    }

    #[tokio::test]
    async fn file_store_puts_reads_ranges_and_deletes() {
        let (store, dir) = file_store();
        store.check().await.unwrap();
        let root = std::fs::canonicalize(dir.join("store")).unwrap();
        assert_eq!(store.base_url(), format!("file://{}", root.display()));
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let local = dir.join("upload.wav");
        std::fs::write(&local, &data).unwrap();
        let key = "camp/call-1.wav";
        assert_eq!(store.put_file(key, &local).await.unwrap(), 10_000);
        let url = store.url_for(key);
        assert_eq!(url, format!("file://{}/camp/call-1.wav", root.display()));
        assert!(store.owns(&url));
        assert_eq!(store.head(&url).await.unwrap(), 10_000);
        assert_eq!(store.head(key).await.unwrap(), 10_000);
        assert_eq!(&store.get_bytes(&url).await.unwrap()[..], &data[..]);
        let part = store.get_range(&url, Some(100..200)).await.unwrap();
        assert_eq!((part.range.clone(), part.total), (100..200, 10_000));
        let got: Vec<Bytes> = part.stream.try_collect().await.unwrap();
        assert_eq!(&got.concat()[..], &data[100..200]);
        store.delete(&url).await.unwrap();
        assert!(matches!(
            store.head(&url).await,
            Err(RecordingError::NotFound)
        ));
        assert!(matches!(
            store.get_range(&url, None).await,
            Err(RecordingError::NotFound)
        ));
        // Deleting again is fine: a sweep may be retried.
        store.delete(&url).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn forged_urls_and_keys_are_refused() {
        let (store, dir) = file_store();
        std::fs::write(dir.join("secret.txt"), b"not a recording").unwrap();
        let root = std::fs::canonicalize(dir.join("store")).unwrap();
        for forged in [
            format!("file://{}/secret.txt", dir.display()),
            format!("file://{}/../secret.txt", root.display()),
            format!("file://{}-other/x.wav", root.display()),
            "file:///etc/passwd".to_owned(),
            "s3://bucket/x.wav".to_owned(),
            "../secret.txt".to_owned(),
            "/etc/passwd".to_owned(),
        ] {
            let err = store.get_range(&forged, None).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    RecordingError::Foreign(_) | RecordingError::BadKey { .. }
                ),
                "{forged}: {err}"
            );
            assert!(store.head(&forged).await.is_err(), "{forged}");
            assert!(store.delete(&forged).await.is_err(), "{forged}");
            assert!(!store.owns(&forged), "{forged}");
        }
        assert!(dir.join("secret.txt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn large_files_go_up_in_parts() {
        let (store, dir) = file_store();
        let local = dir.join("big.wav");
        let len = SINGLE_PUT_MAX + 3 * 1024 * 1024 + 17;
        {
            let f = std::fs::File::create(&local).unwrap();
            f.set_len(len).unwrap();
        }
        assert_eq!(store.put_file("big.wav", &local).await.unwrap(), len);
        assert_eq!(store.head("big.wav").await.unwrap(), len);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_s3_store_fails_the_check() {
        let store = RecordingStore::from_env(&Env::from_pairs([
            (URL_VAR, "s3://nowhere"),
            ("DIALSTACK_S3_ENDPOINT", "http://127.0.0.1:1"),
            ("DIALSTACK_S3_ACCESS_KEY_ID", "id"),
            ("DIALSTACK_S3_SECRET_ACCESS_KEY", "secret"),
        ]))
        .unwrap();
        assert!(store.check().await.is_err());
    }
}
