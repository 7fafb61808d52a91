//! A small client of etcd's v3 API through its JSON gateway (`POST /v3/...`, keys and values
//! base64, 64-bit numbers as strings): what the fleet needs and nothing else — leases
//! (grant, keep alive, revoke), a put, a create-if-absent transaction, a range.
//!
//! Hand-written over the init's HTTP client rather than a gRPC stack (tonic, prost, an async
//! runtime), which would multiply the static PID 1's size for six calls. Each call tries the
//! cluster's endpoints in turn until one answers (a member that is down, or a partition
//! that cut it off, fails over to the next), each within its own bounds; a call runs on a
//! worker thread, never on PID 1's loop.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::http::{self, Bounds, Url};

/// How long one network step may wait.
const STEP: Duration = Duration::from_secs(3);
/// One call to one member, in all.
const CALL: Duration = Duration::from_secs(8);

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No member answered (each one's reason).
    Unreachable(String),
    /// A member answered with an error.
    Refused(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unreachable(why) => write!(f, "etcd is unreachable ({why})"),
            EtcdError::Refused(why) => write!(f, "etcd refused the request ({why})"),
        }
    }
}

/// A key and its value as etcd holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// The cluster's members.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Vec<Url>,
    http: http::client::Client,
}

impl Client {
    /// A client of the members at `urls` (`http://` or `https://host:port`), reached as
    /// `http` says (proxies do not apply: etcd is the fleet's own).
    pub fn new(urls: &[String], http: http::client::Client) -> Result<Self, String> {
        let endpoints = urls
            .iter()
            .map(|u| Url::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err("no etcd endpoint".into());
        }
        Ok(Self { endpoints, http })
    }

    /// Posts `body` to `path` on the first member that answers.
    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let bytes = body.to_string().into_bytes();
        let mut failures = Vec::new();
        for url in &self.endpoints {
            let answer = self.http.send(
                "POST",
                &url.with_path(path),
                &[("Content-Type", "application/json")],
                &bytes,
                Bounds::new(STEP, CALL),
            );
            match answer {
                Ok(r) if r.status == 200 => {
                    return serde_json::from_slice(&r.body)
                        .map_err(|e| EtcdError::Refused(format!("{path}: not JSON: {e}")));
                }
                Ok(r) => {
                    let text = String::from_utf8_lossy(&r.body);
                    let message = text.chars().take(200).collect::<String>();
                    return Err(EtcdError::Refused(format!(
                        "{path}: HTTP {} {message}",
                        r.status
                    )));
                }
                Err(e) => failures.push(format!("{}:{}: {e}", url.host, url.port)),
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        number(&answer, "ID").ok_or_else(|| EtcdError::Refused("the grant has no lease id".into()))
    }

    /// Keeps a lease alive; returns its remaining TTL (0 or less: it has expired).
    pub fn keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        // The gateway streams one answer object per line, wrapped in "result".
        let result = answer.get("result").unwrap_or(&answer);
        Ok(number(result, "TTL").unwrap_or(0))
    }

    /// Revokes a lease, deleting every key attached to it.
    pub fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() })) {
            // A lease that already expired is as good as revoked.
            Err(EtcdError::Refused(why)) if why.contains("not found") => Ok(()),
            other => other.map(drop),
        }
    }

    /// Puts `key` = `value`, attached to `lease` (0: none).
    pub fn put(&self, key: &str, value: &str, lease: i64) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/put",
            &json!({ "key": b64(key), "value": b64(value), "lease": lease.to_string() }),
        )
        .map(drop)
    }

    /// Puts `key` = `value` with `lease` only if `key` does not exist (one transaction);
    /// returns whether it did, or the value that holds the key.
    pub fn create(
        &self,
        key: &str,
        value: &str,
        lease: i64,
    ) -> Result<Result<(), KeyValue>, EtcdError> {
        let answer = self.call(
            "/v3/kv/txn",
            &json!({
                "compare": [{ "key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
                "success": [{ "request_put": { "key": b64(key), "value": b64(value), "lease": lease.to_string() } }],
                "failure": [{ "request_range": { "key": b64(key) } }],
            }),
        )?;
        // proto3 JSON leaves out false booleans.
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(Ok(()));
        }
        let holder = answer
            .pointer("/responses/0/response_range/kvs/0")
            .and_then(key_value);
        Ok(Err(holder.unwrap_or(KeyValue {
            key: key.to_owned(),
            value: String::new(),
            lease: 0,
        })))
    }

    /// The keys under `prefix`, in key order (at most `limit`).
    #[cfg(test)]
    pub fn range_prefix(&self, prefix: &str, limit: u64) -> Result<Vec<KeyValue>, EtcdError> {
        let answer = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix), "range_end": b64(&prefix_end(prefix)), "limit": limit.to_string() }),
        )?;
        Ok(answer
            .get("kvs")
            .and_then(Value::as_array)
            .map(|kvs| kvs.iter().filter_map(key_value).collect())
            .unwrap_or_default())
    }
}

fn b64(text: &str) -> String {
    BASE64.encode(text.as_bytes())
}

/// A 64-bit number the gateway writes as a string (or, from other writers, a number).
fn number(v: &Value, field: &str) -> Option<i64> {
    match v.get(field)? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn key_value(kv: &Value) -> Option<KeyValue> {
    let text = |field: &str| -> Option<String> {
        let raw = BASE64.decode(kv.get(field)?.as_str()?).ok()?;
        String::from_utf8(raw).ok()
    };
    Some(KeyValue {
        key: text("key")?,
        value: text("value").unwrap_or_default(),
        lease: number(kv, "lease").unwrap_or(0),
    })
}

/// The end of the range holding every key that starts with `prefix` (etcd's convention:
/// the prefix with its last byte incremented).
#[cfg(test)]
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).unwrap_or_default();
        }
    }
    "\0".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_answers_are_read() {
        let kv = json!({"key": b64("/crust/fleet/g/slots/0"), "value": b64("m1"), "lease": "7587"});
        assert_eq!(
            key_value(&kv),
            Some(KeyValue {
                key: "/crust/fleet/g/slots/0".into(),
                value: "m1".into(),
                lease: 7587
            })
        );
        assert_eq!(number(&json!({"ID": "12"}), "ID"), Some(12));
        assert_eq!(number(&json!({"TTL": 30}), "TTL"), Some(30));
        assert_eq!(number(&json!({"ID": "x"}), "ID"), None);
        assert_eq!(prefix_end("/crust/fleet/g/"), "/crust/fleet/g0");
        assert_eq!(prefix_end("a"), "b");
    }
}
