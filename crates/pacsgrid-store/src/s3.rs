//! Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, …), for sites whose
//! storage outgrows one machine.
//!
//! Layout: `<prefix>/<h[0..2]>/<hash>`, the folder store's layout under a key prefix, so a
//! folder's `blobs/` tree copied into the bucket under the prefix is a valid store. Writers
//! still stage each object in a local file (received, hashed and fsynced as with the folder
//! store); `put` streams that file to the bucket, re-hashing it on the way and refusing bytes
//! that do not match their name. Small objects go in one PUT, larger ones as a multipart
//! upload of bounded parts, so memory does not grow with the object. S3 answers a PUT or a
//! CompleteMultipartUpload only once the object is durable, so a returned `put` is durable.

use crate::blob::{is_valid_hash, BlobChunks, BlobError, BlobReader, BlobStore, StagedBlob};
use crate::folder::{empty_staging, io_err};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig, WriteMultipart,
};
use serde::Deserialize;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// `[storage.s3]`: where the bucket is and how to sign requests to it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket; it must exist (the node does not create buckets, whose policies are the
    /// operator's to set).
    pub bucket: String,
    /// Key prefix of the blobs inside the bucket, so one bucket can serve several nodes or
    /// other data; each node that keeps its own index needs its own prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Endpoint URL of an S3-compatible service (`http://minio:9000`); absent: AWS S3 itself
    /// (or `AWS_ENDPOINT_URL` from the environment).
    pub endpoint: Option<String>,
    /// Region used to sign requests; absent: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Allow plain `http://` endpoints (a test server, a service on a trusted network).
    #[serde(default)]
    pub allow_http: bool,
    /// Address the bucket as `https://bucket.endpoint/` instead of `https://endpoint/bucket/`.
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// Access key ID; absent: `AWS_ACCESS_KEY_ID` from the environment (or the instance's role).
    pub access_key_id: Option<String>,
    /// File whose content (trimmed) is the secret access key, kept out of the config file;
    /// absent: `AWS_SECRET_ACCESS_KEY` from the environment.
    pub secret_access_key_file: Option<PathBuf>,
}

fn default_prefix() -> String {
    "blobs".into()
}

impl S3Config {
    /// Checks what can be checked without the network, so a bad value stops the start (or
    /// `pacsgrid check`) with the key's name rather than failing the first store.
    pub fn validate(&self) -> Result<(), BlobError> {
        let b = &self.bucket;
        let bucket_ok = (3..=63).contains(&b.len())
            && b.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
            && !b.starts_with(['-', '.'])
            && !b.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(BlobError::Config(format!(
                "storage.s3.bucket {b:?} is not a valid bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
            )));
        }
        self.prefix_key()?;
        if let Some(e) = &self.endpoint {
            let lower = e.to_ascii_lowercase();
            if lower.starts_with("http://") && !self.allow_http {
                return Err(BlobError::Config(format!(
                    "storage.s3.endpoint {e} is plain http: set storage.s3.allow_http = true to allow it"
                )));
            }
            if !lower.starts_with("http://") && !lower.starts_with("https://") {
                return Err(BlobError::Config(format!(
                    "storage.s3.endpoint {e:?} must be an http:// or https:// URL"
                )));
            }
        }
        if self.secret_access_key_file.is_some() && self.access_key_id.is_none() {
            return Err(BlobError::Config(
                "storage.s3.secret_access_key_file is set without storage.s3.access_key_id".into(),
            ));
        }
        Ok(())
    }

    /// The prefix as an object path (empty: the bucket's root).
    fn prefix_key(&self) -> Result<Key, BlobError> {
        let trimmed = self.prefix.trim_matches('/');
        Key::parse(trimmed).map_err(|e| {
            BlobError::Config(format!(
                "storage.s3.prefix {:?} is not a valid key prefix: {e}",
                self.prefix
            ))
        })
    }

    /// Where requests go, for messages: the configured endpoint or AWS itself.
    pub fn endpoint_name(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .unwrap_or_else(|_| "AWS S3".into()),
        }
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn location(&self) -> String {
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        }
    }
}

/// A [`BlobStore`] that keeps each object in an S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: AmazonS3,
    prefix: Key,
    staging: PathBuf,
    /// `bucket "b" at <endpoint>`, the start of every error message.
    label: String,
}

/// Objects up to this size go in one PUT (read whole into memory, at most this much);
/// larger ones as a multipart upload.
const SINGLE_PUT_MAX: u64 = 8 << 20;
/// Smallest part of a multipart upload (S3's minimum is 5 MiB); larger objects get larger
/// parts so that no upload needs more than S3's 10 000 parts.
const PART_SIZE: u64 = 8 << 20;
/// Parts uploaded at once: memory held by one upload is about `(PARTS_IN_FLIGHT + 1) * part`.
const PARTS_IN_FLIGHT: usize = 2;
/// Reads of the staged file while uploading.
const FILE_READ: usize = 1 << 20;
/// Chunk size of readers returned by `open`.
const READ_CHUNK: usize = 1 << 20;

impl S3BlobStore {
    /// Builds the client without touching the network, and empties the local staging area
    /// as the folder store does. Use [`S3BlobStore::open`] to also check the bucket.
    pub fn connect(cfg: &S3Config, staging: &Path) -> Result<S3BlobStore, BlobError> {
        cfg.validate()?;
        std::fs::create_dir_all(staging).map_err(|e| io_err(staging, e))?;
        empty_staging(staging)?;
        // The standard AWS_* variables first, then whatever the file names explicitly.
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &cfg.region {
            builder = builder.with_region(region);
        } else if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        if let Some(id) = &cfg.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(file) = &cfg.secret_access_key_file {
            let secret = std::fs::read_to_string(file).map_err(|e| {
                BlobError::Config(format!(
                    "cannot read storage.s3.secret_access_key_file {}: {e}",
                    file.display()
                ))
            })?;
            let secret = secret.trim();
            if secret.is_empty() {
                return Err(BlobError::Config(format!(
                    "storage.s3.secret_access_key_file {} is empty",
                    file.display()
                )));
            }
            builder = builder.with_secret_access_key(secret);
        }
        // A store waits for S3 while the sender waits for its answer: retry transient
        // failures briefly, then fail the store rather than hold the association for minutes.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
        };
        let client = ClientOptions::new()
            .with_allow_http(cfg.allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        let store = builder
            .with_allow_http(cfg.allow_http)
            .with_virtual_hosted_style_request(cfg.virtual_hosted_style)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| BlobError::Config(format!("storage.s3: {e}")))?;
        Ok(S3BlobStore {
            inner: Arc::new(Inner {
                store,
                prefix: cfg.prefix_key()?,
                staging: staging.to_path_buf(),
                label: format!("bucket {:?} at {}", cfg.bucket, cfg.endpoint_name()),
            }),
        })
    }

    /// Connects and checks the bucket ([`S3BlobStore::probe`]): a node that could not keep
    /// what it acknowledges must not start.
    pub async fn open(cfg: &S3Config, staging: &Path) -> Result<S3BlobStore, BlobError> {
        let store = S3BlobStore::connect(cfg, staging)?;
        store.probe().await?;
        Ok(store)
    }

    /// Lists the prefix, then writes, reads back and removes a small probe object, so that a
    /// missing bucket, refused credentials or a read-only key are found now. Returns what
    /// was checked, in words.
    pub async fn probe(&self) -> Result<String, BlobError> {
        let i = &self.inner;
        let listed = i.store.list_with_delimiter(Some(&i.prefix)).await;
        if let Err(e) = listed {
            return Err(self.remote(format!("cannot list {:?}", i.prefix.as_ref()), e));
        }
        let nonce = format!(
            "pacsgrid-probe-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let key = i.prefix.clone().join(nonce.as_str());
        let body = Bytes::from(nonce.clone().into_bytes());
        if let Err(e) = i.store.put(&key, PutPayload::from(body.clone())).await {
            return Err(self.remote(format!("cannot write {key}"), e));
        }
        let read = match i.store.get(&key).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        let deleted = i.store.delete(&key).await;
        match read {
            Ok(b) if b == body => {}
            Ok(_) => {
                return Err(BlobError::Config(format!(
                    "{}: the probe object {key} read back other bytes than were written",
                    i.label
                )))
            }
            Err(e) => return Err(self.remote(format!("cannot read back {key}"), e)),
        }
        if let Err(e) = deleted {
            return Err(self.remote(format!("cannot delete {key}"), e));
        }
        Ok(format!(
            "{}: listed prefix {:?}, wrote, read back and deleted {key}",
            i.label,
            i.prefix.as_ref()
        ))
    }

    /// The key of an object with this (valid) hash.
    fn key(&self, hash: &str) -> Result<Key, BlobError> {
        if !is_valid_hash(hash) {
            return Err(BlobError::InvalidHash(hash.to_string()));
        }
        Ok(self.inner.prefix.clone().join(&hash[0..2]).join(hash))
    }

    fn remote(&self, what: String, source: object_store::Error) -> BlobError {
        BlobError::Remote {
            what: format!("{}: {what}", self.inner.label),
            cause: cause(&source),
            error: Box::new(source),
        }
    }

    /// Maps a request's error: an absent object is `NotFound`, anything else names the key.
    fn failed(&self, op: &str, hash: &str, key: &Key, e: object_store::Error) -> BlobError {
        match e {
            object_store::Error::NotFound { .. } => BlobError::NotFound(hash.to_string()),
            e => self.remote(format!("{op} {key}"), e),
        }
    }

    /// Uploads the staged file under `key`, hashing it on the way; the upload is completed
    /// only if the bytes match `staged`, and aborted otherwise.
    async fn upload(&self, staged: &StagedBlob, key: &Key) -> Result<(), BlobError> {
        let path = &staged.path;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| io_err(path, e))?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mismatch = |hasher: &blake3::Hasher, size: u64| {
            let actual = hasher.finalize().to_hex().to_string();
            (actual != staged.hash || size != staged.size).then(|| BlobError::HashMismatch {
                expected: staged.hash.clone(),
                actual,
            })
        };
        if staged.size <= SINGLE_PUT_MAX {
            // Read one byte more than declared, so a file that grew is caught, not cut.
            let mut buf = Vec::with_capacity(staged.size as usize + 1);
            (&mut file)
                .take(SINGLE_PUT_MAX + 1)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| io_err(path, e))?;
            hasher.update(&buf);
            size = buf.len() as u64;
            if let Some(e) = mismatch(&hasher, size) {
                return Err(e);
            }
            return self
                .inner
                .store
                .put(key, PutPayload::from(buf))
                .await
                .map(|_| ())
                .map_err(|e| self.remote(format!("cannot write {key}"), e));
        }
        let part = PART_SIZE.max(staged.size.div_ceil(9_000));
        let upload = self
            .inner
            .store
            .put_multipart(key)
            .await
            .map_err(|e| self.remote(format!("cannot start a multipart upload of {key}"), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part as usize);
        let mut buf = vec![0u8; FILE_READ];
        let sent: Result<(), BlobError> = async {
            loop {
                let n = file.read(&mut buf).await.map_err(|e| io_err(path, e))?;
                if n == 0 {
                    return Ok(());
                }
                hasher.update(&buf[..n]);
                size += n as u64;
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.remote(format!("cannot upload a part of {key}"), e))?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        let refused = match sent {
            Err(e) => Some(e),
            Ok(()) => mismatch(&hasher, size),
        };
        if let Some(e) = refused {
            // Nothing becomes visible under the key; the parts uploaded so far are dropped.
            if let Err(abort) = writer.abort().await {
                tracing::warn!(%key, error = %abort, "could not abort a multipart upload; a lifecycle rule for incomplete uploads removes its parts");
            }
            return Err(e);
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| self.remote(format!("cannot complete the upload of {key}"), e))
    }

    /// The object's bytes from `offset` as the client delivers them.
    async fn get_from(
        &self,
        hash: &str,
        offset: u64,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let key = self.key(hash)?;
        let opts = if offset > 0 {
            GetOptions::default().with_range(Some(GetRange::Offset(offset)))
        } else {
            GetOptions::default()
        };
        let got = match self.inner.store.get_opts(&key, opts).await {
            Ok(got) => got,
            Err(e @ object_store::Error::NotFound { .. }) => {
                return Err(self.failed("read", hash, &key, e))
            }
            Err(e) if offset > 0 => {
                // S3 refuses a range that starts at the end (416): an offset at or past the
                // end reads nothing, as with a file.
                let size = self.size(hash).await?;
                if offset >= size {
                    return Ok(futures::stream::empty().boxed());
                }
                return Err(self.failed("read", hash, &key, e));
            }
            Err(e) => return Err(self.failed("read", hash, &key, e)),
        };
        let store = self.clone();
        let what = key.to_string();
        Ok(got
            .into_stream()
            .map_err(move |e| store.remote(format!("reading {what}"), e))
            .boxed())
    }
}

/// One line saying why a request failed: the innermost error, with the S3 error code and
/// message pulled out of an XML answer, and what that usually means.
fn cause(e: &object_store::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let text = inner.to_string();
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let len = text[start..].find(&format!("</{name}>"))?;
        Some(text[start..start + len].to_string())
    };
    let status = text
        .find("status code: ")
        .map(|i| &text[i + "status code: ".len()..])
        .and_then(|t| t.split(':').next())
        .map(str::trim);
    let said = match (tag("Code"), tag("Message"), status) {
        (Some(code), Some(msg), Some(status)) => format!("{status}, {code}: {msg}"),
        (Some(code), None, Some(status)) => format!("{status}, {code}"),
        (Some(code), Some(msg), None) => format!("{code}: {msg}"),
        _ => text.split(": <?xml").next().unwrap_or(&text).to_string(),
    };
    let hint = match tag("Code").as_deref() {
        Some("NoSuchBucket") => "the bucket does not exist",
        Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken") => {
            "the credentials were refused"
        }
        Some("AccessDenied" | "AllAccessDisabled") => "these credentials may not do this",
        _ if text.contains("Connection refused") || text.contains("dns error") => {
            "cannot connect to the endpoint"
        }
        _ => match e {
            object_store::Error::Unauthenticated { .. } => "the credentials were refused",
            object_store::Error::PermissionDenied { .. } => "these credentials may not do this",
            _ => "",
        },
    };
    if hint.is_empty() {
        said
    } else {
        format!("{hint} ({said})")
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    fn staging_dir(&self) -> &Path {
        &self.inner.staging
    }

    async fn put(&self, staged: StagedBlob) -> Result<(), BlobError> {
        let key = self.key(&staged.hash)?;
        let present = match self.inner.store.head(&key).await {
            Ok(meta) => meta.size == staged.size,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(self.remote(format!("cannot look up {key}"), e)),
        };
        if !present {
            self.upload(&staged, &key).await?;
        }
        // Content-addressed: an object already there has these very bytes.
        match tokio::fs::remove_file(&staged.path).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err(&staged.path, e)),
            _ => Ok(()),
        }
    }

    async fn open(&self, hash: &str, offset: u64) -> Result<BlobReader, BlobError> {
        let chunks = self.chunks(hash, offset, READ_CHUNK).await?;
        let io = chunks.map(|r| r.map_err(std::io::Error::other));
        Ok(Box::pin(tokio_util::io::StreamReader::new(io)))
    }

    async fn chunks(&self, hash: &str, offset: u64, chunk: usize) -> Result<BlobChunks, BlobError> {
        let chunk = chunk.max(1);
        let stream = self.get_from(hash, offset).await?;
        // The client's pieces are as the network delivered them: cut those larger than asked.
        Ok(Box::pin(stream.flat_map(move |r| {
            let pieces: Vec<Result<Bytes, BlobError>> = match r {
                Ok(mut b) => {
                    let mut out = Vec::with_capacity(b.len() / chunk + 1);
                    while b.len() > chunk {
                        out.push(Ok(b.split_to(chunk)));
                    }
                    if !b.is_empty() {
                        out.push(Ok(b));
                    }
                    out
                }
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(pieces)
        })))
    }

    async fn size(&self, hash: &str) -> Result<u64, BlobError> {
        let key = self.key(hash)?;
        match self.inner.store.head(&key).await {
            Ok(meta) => Ok(meta.size),
            Err(e) => Err(self.failed("cannot look up", hash, &key, e)),
        }
    }

    async fn delete(&self, hash: &str) -> Result<(), BlobError> {
        let key = self.key(hash)?;
        match self.inner.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.remote(format!("cannot delete {key}"), e)),
        }
    }

    async fn list(&self) -> Result<Vec<String>, BlobError> {
        let prefix = &self.inner.prefix;
        let mut listing = self.inner.store.list(Some(prefix));
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.remote(format!("cannot list {prefix}"), e))?;
            // Only keys of the layout count: probes and other data under the prefix do not.
            let Some(rest) = meta.location.prefix_match(prefix) else {
                continue;
            };
            let parts: Vec<String> = rest.map(|p| p.as_ref().to_string()).collect();
            if let [fan, hash] = parts.as_slice() {
                if is_valid_hash(hash) && hash[0..2] == *fan {
                    out.push(hash.clone());
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn local_path(&self, _hash: &str) -> Option<PathBuf> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> Result<S3Config, String> {
        let c: S3Config = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn settings_are_checked_before_any_request() {
        let c = cfg("bucket = \"scans\"\n").unwrap();
        assert_eq!(c.prefix, "blobs");
        assert_eq!(c.location(), "s3://scans/blobs");
        assert!(cfg("bucket = \"Bad_Bucket\"\n")
            .unwrap_err()
            .contains("storage.s3.bucket"));
        assert!(
            cfg("bucket = \"scans\"\nendpoint = \"http://127.0.0.1:9000\"\n")
                .unwrap_err()
                .contains("allow_http")
        );
        cfg("bucket = \"scans\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n")
            .unwrap();
        assert!(cfg("bucket = \"scans\"\nsecret_access_key_file = \"k\"\n")
            .unwrap_err()
            .contains("access_key_id"));
        assert!(cfg("bucket = \"scans\"\nprefix = \"a/../b\"\n")
            .unwrap_err()
            .contains("prefix"));
        assert!(cfg("bucket = \"scans\"\nsecret_access_key = \"inline\"\n")
            .unwrap_err()
            .contains("secret_access_key"));
        let c = cfg("bucket = \"scans\"\nprefix = \"/site-a/blobs/\"\n").unwrap();
        assert_eq!(c.prefix_key().unwrap().as_ref(), "site-a/blobs");
    }

    #[test]
    fn keys_fan_out_like_the_folder_store() {
        let dir = tempfile::tempdir().unwrap();
        // a secret of its own, so the test does not depend on AWS_* in the environment
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let c = cfg(&format!(
            "bucket = \"scans\"\nprefix = \"p\"\naccess_key_id = \"a\"\n\
             secret_access_key_file = {:?}\n",
            secret.display().to_string()
        ))
        .unwrap();
        let store = S3BlobStore::connect(&c, &dir.path().join("staging")).unwrap();
        let h = "ab".repeat(32);
        assert_eq!(store.key(&h).unwrap().as_ref(), format!("p/ab/{h}"));
        assert!(matches!(store.key("../x"), Err(BlobError::InvalidHash(_))));
        assert_eq!(store.local_path(&h), None);
    }

    #[test]
    fn failures_are_told_in_one_line_with_what_they_mean() {
        let xml = "Error performing list request: Server returned non-2xx status code: 404 Not \
                   Found: <?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The \
                   specified bucket does not exist</Message></Error>";
        let e = object_store::Error::Generic {
            store: "S3",
            source: xml.into(),
        };
        assert_eq!(
            cause(&e),
            "the bucket does not exist (404 Not Found, NoSuchBucket: The specified bucket does not exist)"
        );
        let e = object_store::Error::Generic {
            store: "S3",
            source: "tcp connect error: Connection refused (os error 111)".into(),
        };
        assert!(cause(&e).starts_with("cannot connect to the endpoint ("));
    }

    #[test]
    fn an_unreadable_secret_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let c = S3Config {
            access_key_id: Some("a".into()),
            secret_access_key_file: Some(dir.path().join("missing.key")),
            ..cfg("bucket = \"scans\"\n").unwrap()
        };
        let err = S3BlobStore::connect(&c, &dir.path().join("staging")).unwrap_err();
        assert!(err.to_string().contains("missing.key"), "{err}");
    }
}
