//! `cargo xtask fleet status`: the fleet as the hosts report it in etcd (docs/UPDATES.md,
//! "Fleets"): how many hosts run each version, which are mid-update, which rolled back and
//! why, and which hold reboot slots.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

/// The key prefix the hosts write under.
const PREFIX: &str = "/crust/fleet/";

/// One host's status as it reported it.
#[derive(Debug, Clone)]
pub struct Host {
    /// The group.
    pub group: String,
    /// Its status document.
    pub status: Value,
}

/// Reads every host's status (of `group`, or of every group) from the etcd at `url`.
pub fn hosts(url: &str, group: Option<&str>) -> Result<Vec<Host>> {
    let prefix = match group {
        Some(g) => format!("{PREFIX}{g}/hosts/"),
        None => PREFIX.to_owned(),
    };
    let mut end = prefix.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let body = json!({
        "key": BASE64.encode(prefix.as_bytes()),
        "range_end": BASE64.encode(&end),
    });
    let endpoint = format!("{}/v3/kv/range", url.trim_end_matches('/'));
    let mut response = ureq::post(&endpoint)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .with_context(|| format!("cannot ask etcd at {url}"))?;
    let text = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("cannot read etcd's answer from {url}"))?;
    let answer: Value =
        serde_json::from_str(&text).with_context(|| format!("etcd at {url} answered {text:?}"))?;
    let mut hosts = Vec::new();
    for kv in answer
        .get("kvs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let decode = |f: &str| -> Option<String> {
            String::from_utf8(BASE64.decode(kv.get(f)?.as_str()?).ok()?).ok()
        };
        let (Some(key), Some(value)) = (decode("key"), decode("value")) else {
            continue;
        };
        let Some(group) = key
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once("/hosts/"))
            .map(|(g, _)| g.to_owned())
        else {
            continue;
        };
        let Ok(status) = serde_json::from_str(&value) else {
            continue;
        };
        hosts.push(Host { group, status });
    }
    Ok(hosts)
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("?")
}

/// The table `fleet status` prints.
pub fn table(hosts: &[Host]) -> String {
    let mut out = String::new();
    let mut versions: BTreeMap<&str, usize> = BTreeMap::new();
    for h in hosts {
        *versions.entry(field(&h.status, "version")).or_default() += 1;
    }
    out.push_str(&format!("{} hosts:", hosts.len()));
    for (version, n) in &versions {
        out.push_str(&format!(" {n} on {version};"));
    }
    out.push('\n');
    let busy: Vec<&Host> = hosts
        .iter()
        .filter(|h| {
            matches!(
                field(&h.status, "state"),
                "downloading" | "installed" | "waiting" | "rebooting" | "trial"
            )
        })
        .collect();
    out.push_str(&format!("{} mid-update\n\n", busy.len()));
    out.push_str(&format!(
        "{:<10} {:<16} {:<10} {:<9} {:<4} {:<12} {}\n",
        "GROUP", "HOST", "MACHINE", "VERSION", "SLOT", "STATE", "DETAIL"
    ));
    for h in hosts {
        let s = &h.status;
        let machine = field(s, "machine-id");
        out.push_str(&format!(
            "{:<10} {:<16} {:<10} {:<9} {:<4} {:<12} {}\n",
            h.group,
            field(s, "hostname"),
            &machine[..machine.len().min(10)],
            field(s, "version"),
            field(s, "slot"),
            field(s, "state"),
            field(s, "detail"),
        ));
    }
    out
}

/// `cargo xtask fleet status`.
pub fn status(url: &str, group: Option<&str>, as_json: bool) -> Result<()> {
    if !url.starts_with("http://") {
        bail!("--etcd {url:?}: give the URL of an etcd member, http://host:2379");
    }
    let hosts = hosts(url, group)?;
    if as_json {
        let all: Vec<Value> = hosts
            .iter()
            .map(|h| {
                let mut s = h.status.clone();
                if let Some(o) = s.as_object_mut() {
                    o.insert("group".into(), Value::String(h.group.clone()));
                }
                s
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print!("{}", table(&hosts));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_counts_versions_and_updates() {
        let host = |v: &str, state: &str| Host {
            group: "web".into(),
            status: json!({"machine-id": "0123456789abcdef", "hostname": "h", "version": v,
                           "slot": "a", "state": state, "detail": "d"}),
        };
        let t = table(&[
            host("0.2.0", "blessed"),
            host("0.1.0", "waiting"),
            host("0.2.0", "idle"),
        ]);
        assert!(
            t.starts_with("3 hosts: 1 on 0.1.0; 2 on 0.2.0;\n1 mid-update\n"),
            "{t}"
        );
        assert!(
            t.contains("web        h                0123456789 0.1.0     a    waiting      d"),
            "{t}"
        );
    }
}
