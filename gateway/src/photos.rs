//! Photo answers of micro-tasks: where an app uploads a step's photo, and
//! the URL that becomes the step's answer.
//!
//! * `s3`: a presigned PUT to an S3-compatible bucket, its content type
//!   bound to the signature, so the store refuses another (S3 cannot bind
//!   the length of a presigned PUT: the size is checked as declared).
//! * `local` (the default): the gateway itself takes the PUT at
//!   `/photos/{key}` with an expiring HMAC signature over the key, the
//!   content type and the length (checked before a byte is written), and
//!   serves the photo to tokens of its customer.
//!
//! Either way a photo's URL (the step's answer) is the gateway's
//! `/photos/{key}`: it serves a local photo, and redirects to a presigned
//! GET of an S3 one, for tokens of the photo's customer.

use hmac::{Hmac, KeyInit, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::{HeaderValue, Method, SignedUrlOptions, Signer};
use orq_shared::config::{Settings, StorageKind};
use sha2::Sha256;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// Where an app sends a photo, and what it is then called.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ticket {
    pub method: &'static str,
    pub upload_url: String,
    /// Headers the PUT must carry exactly.
    pub headers: serde_json::Value,
    /// The photo's URL: the step's answer.
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Clone)]
pub enum Storage {
    Local {
        dir: PathBuf,
        public_url: String,
        key: [u8; 32],
        ttl: Duration,
    },
    S3 {
        store: Arc<AmazonS3>,
        public_url: String,
        ttl: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Config(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

impl Storage {
    /// `listening` is where the gateway is bound: the photo URLs' base
    /// when `storage.public_url` is empty (with `listen` on port 0, the
    /// port the system gave).
    pub fn from_settings(
        settings: &Settings,
        listening: std::net::SocketAddr,
    ) -> Result<Storage, StorageError> {
        let s = &settings.storage;
        let ttl = Duration::from_secs(s.url_ttl_secs.max(1));
        let public_url = if s.public_url.is_empty() {
            format!("http://{listening}")
        } else {
            s.public_url.trim_end_matches('/').to_string()
        };
        match s.kind {
            StorageKind::Local => {
                let key = orq_shared::secret::derive_key(
                    &settings.security.secret_key,
                    "orquestra photo url v1",
                )
                .map_err(|e| StorageError::Config(e.to_string()))?;
                Ok(Storage::Local {
                    dir: PathBuf::from(&s.local_dir),
                    public_url,
                    key,
                    ttl,
                })
            }
            StorageKind::S3 => {
                if s.s3_bucket.is_empty() {
                    return Err(StorageError::Config(
                        "storage.s3_bucket is required with storage.kind = \"s3\"".into(),
                    ));
                }
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(&s.s3_bucket)
                    .with_region(&s.s3_region)
                    .with_access_key_id(&s.s3_access_key_id)
                    .with_secret_access_key(&s.s3_secret_access_key);
                if !s.s3_endpoint.is_empty() {
                    builder = builder
                        .with_endpoint(&s.s3_endpoint)
                        .with_virtual_hosted_style_request(false)
                        .with_allow_http(s.s3_endpoint.starts_with("http://"));
                }
                Ok(Storage::S3 {
                    store: Arc::new(builder.build()?),
                    public_url,
                    ttl,
                })
            }
        }
    }

    /// An upload ticket for `key`, bound to its content type and length.
    pub async fn ticket(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
    ) -> Result<Ticket, StorageError> {
        let headers = serde_json::json!({
            "content-type": content_type,
            "content-length": size.to_string(),
        });
        match self {
            Storage::Local {
                public_url,
                key: secret,
                ttl,
                ..
            } => {
                let expires_at = OffsetDateTime::now_utc() + *ttl;
                let expires = expires_at.unix_timestamp();
                let sig = sign(secret, key, expires, content_type, size);
                let url = format!("{public_url}/photos/{key}");
                Ok(Ticket {
                    method: "PUT",
                    upload_url: format!("{url}?expires={expires}&sig={}", hex::encode(sig)),
                    headers,
                    url,
                    expires_at,
                })
            }
            Storage::S3 {
                store,
                public_url,
                ttl,
            } => {
                // The signer owns `content-length` (a presigned PUT cannot
                // bind it): the size is checked as declared.
                let options = SignedUrlOptions::new().with_signed_header(
                    http_header("content-type"),
                    HeaderValue::from_str(content_type)
                        .map_err(|e| StorageError::Config(e.to_string()))?,
                );
                let signed = store
                    .signed_url_opts(Method::PUT, &ObjectPath::from(key), *ttl, &options)
                    .await?;
                Ok(Ticket {
                    method: "PUT",
                    upload_url: signed.to_string(),
                    headers: serde_json::json!({ "content-type": content_type }),
                    url: format!("{public_url}/photos/{key}"),
                    expires_at: OffsetDateTime::now_utc() + *ttl,
                })
            }
        }
    }
}

impl Storage {
    /// A presigned GET of an S3 photo (the gateway redirects readers to it);
    /// `None` for local storage, which the gateway serves itself.
    pub async fn s3_download(&self, key: &str) -> Result<Option<String>, StorageError> {
        match self {
            Storage::Local { .. } => Ok(None),
            Storage::S3 { store, ttl, .. } => Ok(Some(
                store
                    .signed_url(Method::GET, &ObjectPath::from(key), *ttl)
                    .await?
                    .to_string(),
            )),
        }
    }
}

fn http_header(name: &'static str) -> object_store::signer::HeaderName {
    object_store::signer::HeaderName::from_static(name)
}

fn mac(secret: &[u8; 32]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

fn message(key: &str, expires: i64, content_type: &str, size: u64) -> String {
    format!("PUT\n{key}\n{expires}\n{content_type}\n{size}")
}

/// The signature of a local upload URL.
pub fn sign(secret: &[u8; 32], key: &str, expires: i64, content_type: &str, size: u64) -> Vec<u8> {
    let mut m = mac(secret);
    m.update(message(key, expires, content_type, size).as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Whether a local upload is the one the ticket allowed: the signature
/// (compared in constant time) over what the request carries, and not
/// expired.
pub fn verify(
    secret: &[u8; 32],
    key: &str,
    expires: i64,
    content_type: &str,
    size: u64,
    sig_hex: &str,
    now: OffsetDateTime,
) -> Result<(), &'static str> {
    let sig = hex::decode(sig_hex).map_err(|_| "the signature is malformed")?;
    let mut m = mac(secret);
    m.update(message(key, expires, content_type, size).as_bytes());
    m.verify_slice(&sig)
        .map_err(|_| "the signature does not match this upload (key, content type or length)")?;
    if now.unix_timestamp() > expires {
        return Err("the upload URL has expired");
    }
    Ok(())
}

/// A key is `photos/<customer>/<task>/<execution>/<step>-<id>.<ext>`: only
/// these characters, no `..`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 512
        && !key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_'))
}

/// The file extension of an image content type.
pub fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/heic" => "heic",
        "image/gif" => "gif",
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_signatures_bind_key_type_length_and_time() {
        let secret = [7u8; 32];
        let now = OffsetDateTime::now_utc();
        let expires = now.unix_timestamp() + 60;
        let key = "photos/c/t/e/1-x.jpg";
        let sig = hex::encode(sign(&secret, key, expires, "image/jpeg", 10));
        assert_eq!(
            verify(&secret, key, expires, "image/jpeg", 10, &sig, now),
            Ok(())
        );
        for (k, ct, n, e) in [
            ("photos/c/t/e/2-x.jpg", "image/jpeg", 10, expires),
            (key, "image/png", 10, expires),
            (key, "image/jpeg", 11, expires),
            (key, "image/jpeg", 10, expires + 1),
        ] {
            assert!(
                verify(&secret, k, e, ct, n, &sig, now).is_err(),
                "{k} {ct} {n} {e}"
            );
        }
        let later = now + time::Duration::seconds(61);
        assert_eq!(
            verify(&secret, key, expires, "image/jpeg", 10, &sig, later),
            Err("the upload URL has expired")
        );
        assert!(verify(&[8u8; 32], key, expires, "image/jpeg", 10, &sig, now).is_err());
        assert!(verify(&secret, key, expires, "image/jpeg", 10, "zz", now).is_err());
    }

    #[test]
    fn keys_stay_inside_the_photo_directory() {
        assert!(valid_key("photos/a/b/c/1-x.jpg"));
        assert!(!valid_key("photos/../etc/passwd"));
        assert!(!valid_key("/photos/a"));
        assert!(!valid_key("photos//a"));
        assert!(!valid_key("photos/a b"));
        assert!(!valid_key(""));
    }
}
