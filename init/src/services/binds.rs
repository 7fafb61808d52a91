//! Bind-mount sources of a container, made before it starts: a profile's `mounts` name
//! folders under `/var` (the state partition), which a fresh or newly grown disk does not
//! hold yet, and crun refuses a bind mount whose source is missing.

use std::fs;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

/// Largest `config.json` read (bundles' are a few KiB).
const MAX_CONFIG: u64 = 1 << 20;

/// Creates every missing bind-mount source under `/var` that the bundle's `config.json`
/// names; an error says which could not be made.
pub fn prepare(bundle: &Path) -> Result<(), String> {
    let path = bundle.join("config.json");
    let mut text = Vec::new();
    fs::File::open(&path)
        .and_then(|f| f.take(MAX_CONFIG).read_to_end(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let config: Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for source in sources(&config) {
        fs::create_dir_all(&source)
            .map_err(|e| format!("cannot create the mount source {source}: {e}"))?;
    }
    Ok(())
}

/// The bind sources under `/var` (no `..`), in order.
fn sources(config: &Value) -> Vec<String> {
    config
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| {
            m.get("type").and_then(Value::as_str) == Some("bind")
                || m.get("options").and_then(Value::as_array).is_some_and(|o| {
                    o.iter()
                        .any(|v| matches!(v.as_str(), Some("bind" | "rbind")))
                })
        })
        .filter_map(|m| m.get("source").and_then(Value::as_str))
        .filter(|s| s.starts_with("/var/") && !s.split('/').any(|c| c == ".."))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bind_sources_under_var_are_made() {
        let config: Value = serde_json::from_str(
            r#"{"mounts":[
                {"destination":"/data","type":"bind","source":"/var/lib/web","options":["rbind","rw"]},
                {"destination":"/etc/hosts","type":"bind","source":"/etc/hosts","options":["bind","ro"]},
                {"destination":"/x","source":"/var/lib/x","options":["rbind"]},
                {"destination":"/y","type":"bind","source":"/var/../etc"},
                {"destination":"/tmp","type":"tmpfs","source":"tmpfs"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(sources(&config), ["/var/lib/web", "/var/lib/x"]);
    }

    #[test]
    fn a_bundle_gets_its_sources() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"mounts":[]}"#).unwrap();
        prepare(dir.path()).unwrap();
        assert!(prepare(&dir.path().join("missing")).is_err());
    }
}
