//! Webhooks, the pure part: the seed's event shape, Standard Webhooks
//! signatures, `Retry-After`, and which URLs and addresses a delivery may
//! go to (the retry schedule is `retry`'s).

use crate::deny::DenyList;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::net::IpAddr;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// One event as a receiver gets it (seed 004): `createdAt` in epoch
/// milliseconds, as the seed's examples show.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WireEvent {
    pub id: Uuid,
    #[serde(rename = "jobId")]
    pub job_id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    #[serde(rename = "createdAt")]
    pub created_at: i64,
}

impl WireEvent {
    /// From a stored event. As in the seed, a STATUS_CHANGE's description
    /// is the new status and a PERCENT_CHANGE's the number.
    pub fn from_stored(
        id: Uuid,
        job_id: Uuid,
        kind: &str,
        description: &str,
        to_status: Option<&str>,
        created_at: OffsetDateTime,
    ) -> WireEvent {
        let description = match (kind, to_status) {
            ("STATUS_CHANGE", Some(status)) => status.to_string(),
            ("PERCENT_CHANGE", _) => description
                .split('%')
                .next()
                .map(str::trim)
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .unwrap_or(description)
                .to_string(),
            _ => description.to_string(),
        };
        WireEvent {
            id,
            job_id,
            kind: kind.to_string(),
            description,
            created_at: i64::try_from(created_at.unix_timestamp_nanos() / 1_000_000)
                .unwrap_or(i64::MAX),
        }
    }
}

/// The prefix of a signing secret as shown (Standard Webhooks' `whsec_`).
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn generate_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
/// secret's bytes (the base64 after `whsec_`).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Reads `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    Duration::try_from(at - now).ok()
}

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadUrl(pub String);

/// Checks a webhook URL: http or https, a host, no credentials in it (the
/// callback's `user`/`password` travel as headers), and, when the host is
/// an address, not a denied one.
pub fn check_url(raw: &str, deny: &DenyList) -> Result<url::Url, BadUrl> {
    let url = url::Url::parse(raw.trim()).map_err(|e| BadUrl(format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BadUrl("the URL must be http or https".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(BadUrl(
            "the URL must not carry credentials; give user and password beside it".into(),
        ));
    }
    match url.host() {
        None => return Err(BadUrl("the URL has no host".into())),
        Some(url::Host::Ipv4(ip)) => deny
            .check(IpAddr::V4(ip))
            .map_err(|e| BadUrl(e.to_string()))?,
        Some(url::Host::Ipv6(ip)) => deny
            .check(IpAddr::V6(ip))
            .map_err(|e| BadUrl(e.to_string()))?,
        Some(url::Host::Domain(_)) => {}
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_take_the_seeds_shape() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_617_034_915_185_000_000).expect("ts");
        let e = WireEvent::from_stored(
            Uuid::nil(),
            Uuid::nil(),
            "STATUS_CHANGE",
            "WAITING -> ASSIGNED",
            Some("ASSIGNED"),
            at,
        );
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["createdAt"], 1_617_034_915_185_i64);
        assert_eq!(v["description"], "ASSIGNED");
        assert_eq!(v["type"], "STATUS_CHANGE");
        assert!(v.get("jobId").is_some());
        let p = WireEvent::from_stored(
            Uuid::nil(),
            Uuid::nil(),
            "PERCENT_CHANGE",
            "50% (1/2 rows)",
            None,
            at,
        );
        assert_eq!(p.description, "50");
        let s = WireEvent::from_stored(
            Uuid::nil(),
            Uuid::nil(),
            "STEP_CHANGE",
            "fetching",
            None,
            at,
        );
        assert_eq!(s.description, "fetching");
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        let fresh = generate_secret();
        assert!(fresh.starts_with(SECRET_PREFIX));
        assert_ne!(sign(&fresh, "a", 1, b"x"), sign(&fresh, "a", 1, b"y"));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("ts");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:13:27 +0000", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn urls_and_addresses_are_checked() {
        let deny = DenyList::parse(
            "webhooks.deny_networks",
            &["127.0.0.0/8".into(), "10.0.0.0/8".into(), "::1/128".into()],
        )
        .expect("nets");
        assert!(check_url("https://example.com/hook", &deny).is_ok());
        assert!(check_url("ftp://example.com/", &deny).is_err());
        assert!(check_url("https://u:p@example.com/", &deny).is_err());
        assert!(check_url("http://127.0.0.1:9/x", &deny).is_err());
        assert!(check_url("http://[::1]/x", &deny).is_err());
        assert!(check_url("http://[::ffff:10.1.2.3]/x", &deny).is_err());
        assert!(check_url("not a url", &deny).is_err());
        assert!(check_url("http://[::127.0.0.1]/x", &deny).is_err());
        assert!(check_url("http://[::ffff:0:127.0.0.1]/x", &deny).is_err());
        assert!(check_url("http://127.0.0.1:9/x", &DenyList::default()).is_ok());
    }
}
