//! OCI process objects, as the builder writes them (`process.json` of host and pulled
//! services, `health.json` of exec checks): the fields the init itself uses to start a
//! program. crun reads the full objects; the init reads only these.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The arguments, environment and working directory of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Process {
    /// Program and arguments (empty for a pulled image that keeps the image's own).
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default = "slash")]
    pub cwd: String,
}

fn slash() -> String {
    "/".into()
}

impl Process {
    /// Reads a process object from a JSON file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The environment as `(key, value)` pairs.
    pub fn env_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env.iter().filter_map(|kv| kv.split_once('='))
    }

    /// Sets (or replaces) environment variables, keeping the others in order.
    pub fn set_env<'a>(&mut self, vars: impl IntoIterator<Item = (&'a String, &'a String)>) {
        for (key, value) in vars {
            let entry = format!("{key}={value}");
            match self
                .env
                .iter_mut()
                .find(|kv| kv.split_once('=').is_some_and(|(k, _)| k == key))
            {
                Some(existing) => *existing = entry,
                None => self.env.push(entry),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_builders_objects_and_sets_variables() {
        let mut p: Process = serde_json::from_str(
            r#"{"args":["/usr/bin/containerd"],"env":["PATH=/bin","A=1"],"cwd":"/","terminal":false,"user":{"uid":0,"gid":0}}"#,
        )
        .unwrap();
        assert_eq!(p.args, ["/usr/bin/containerd"]);
        let (a, b) = ("A".to_string(), "2".to_string());
        let (c, d) = ("C".to_string(), "3".to_string());
        p.set_env([(&a, &b), (&c, &d)]);
        assert_eq!(p.env, ["PATH=/bin", "A=2", "C=3"]);
        assert_eq!(p.env_pairs().count(), 3);
        let q: Process = serde_json::from_str("{}").unwrap();
        assert_eq!(q.cwd, "/");
    }
}
