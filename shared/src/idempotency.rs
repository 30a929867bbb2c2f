//! `Idempotency-Key`: what a key may be, and the fingerprint of a request
//! that decides whether a repeat is "the same request". Pure; the storage
//! is `repo::idempotency`, the HTTP side the gateway's `idempotency`.
//!
//! The fingerprint is a SHA-256 over the operation, its path parameters and
//! the parsed body in a canonical form (object keys sorted, no whitespace),
//! so a client that re-serialises its body (another key order, other
//! spacing) is still repeating the same request, while any changed value
//! is another request.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Longest key accepted, in bytes (all printable ASCII).
pub const MAX_KEY_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1-255 printable ASCII characters")]
pub struct BadKey;

/// A client's key: 1-255 printable ASCII characters (spaces allowed inside;
/// surrounding spaces are not part of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<IdempotencyKey, BadKey> {
        let text = std::str::from_utf8(raw).map_err(|_| BadKey)?.trim();
        if text.is_empty()
            || text.len() > MAX_KEY_LEN
            || !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(BadKey);
        }
        Ok(IdempotencyKey(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The fingerprint of one create request: `operation`, then each path
/// parameter, then the body, each length-prefixed so no two different
/// requests run together into the same bytes.
pub fn request_hash(operation: &str, params: &[&str], body: &Value) -> Vec<u8> {
    let mut hash = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    part(b"orq-idempotency-v1");
    part(operation.as_bytes());
    for p in params {
        part(p.as_bytes());
    }
    let mut canonical = Vec::new();
    write_canonical(body, &mut canonical);
    part(&canonical);
    hash.finalize().to_vec()
}

/// JSON with object keys in byte order and no insignificant whitespace.
/// (The workspace's serde_json keeps insertion order, so its own output is
/// not canonical.)
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_one_to_255_printable_ascii_characters() {
        assert_eq!(IdempotencyKey::parse(b"k-1").expect("ok").as_str(), "k-1");
        assert_eq!(
            IdempotencyKey::parse(b"  with inner space ")
                .expect("ok")
                .as_str(),
            "with inner space"
        );
        assert!(IdempotencyKey::parse(&[b'a'; 255]).is_ok());
        assert_eq!(IdempotencyKey::parse(&[b'a'; 256]), Err(BadKey));
        assert_eq!(IdempotencyKey::parse(b""), Err(BadKey));
        assert_eq!(IdempotencyKey::parse(b"   "), Err(BadKey));
        assert_eq!(IdempotencyKey::parse(b"tab\there"), Err(BadKey));
        assert_eq!(IdempotencyKey::parse("ñ".as_bytes()), Err(BadKey));
        assert_eq!(IdempotencyKey::parse(&[0xff, 0x41]), Err(BadKey));
    }

    #[test]
    fn key_order_and_spacing_do_not_change_the_fingerprint() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).expect("json");
        assert_eq!(request_hash("op", &[], &a), request_hash("op", &[], &b));
        assert_eq!(canonical_json(&a), r#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
    }

    #[test]
    fn any_other_value_operation_or_parameter_changes_it() {
        let base = request_hash("tasks.create", &["t1"], &json!({"a": [1, 2]}));
        for other in [
            request_hash("tasks.create", &["t1"], &json!({"a": [2, 1]})),
            request_hash("tasks.create", &["t1"], &json!({"a": [1, 2], "b": null})),
            request_hash("tasks.create", &["t1"], &json!({"a": ["1", 2]})),
            request_hash("bots.create", &["t1"], &json!({"a": [1, 2]})),
            request_hash("tasks.create", &["t2"], &json!({"a": [1, 2]})),
            request_hash("tasks.create", &[], &json!({"a": [1, 2]})),
            // Length prefixes: parameters cannot run into each other.
            request_hash("tasks.create", &["t", "1"], &json!({"a": [1, 2]})),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base.len(), 32);
    }

    #[test]
    fn strings_are_escaped_as_json() {
        assert_eq!(
            canonical_json(&json!({"k\"": "line\nbreak"})),
            r#"{"k\"":"line\nbreak"}"#
        );
    }
}
