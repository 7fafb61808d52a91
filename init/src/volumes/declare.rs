//! Which volumes this boot has: the profile's, as the builder wrote them into the root
//! (`/usr/lib/crust/volumes/<name>`), with user-data's `[[volume]]` tables replacing those of
//! the same name and adding others; and the config phase's check of user-data's volumes
//! and volume mounts against the image and its policy.

use std::fs;
use std::path::Path;

use crust_format::user_data::{Permission, Policy};
use crust_format::volume::{Disks, VOLUMES_DIR, VolumeSpec};

use crate::config::schema::SchemaError;
use crate::config::services::{self as user_services, Service};
use crate::config::volumes::{self as user_volumes, Volume};

/// The root's volumes, sorted by name. A file that cannot be read is reported in the
/// second list and left out (the builder wrote it: only a builder bug breaks one).
pub fn load_root(root: &Path) -> (Vec<VolumeSpec>, Vec<String>) {
    let dir = root.join(VOLUMES_DIR);
    let Ok(entries) = fs::read_dir(&dir) else {
        return (Vec::new(), Vec::new());
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut specs = Vec::new();
    let mut problems = Vec::new();
    for name in names {
        let path = dir.join(&name);
        match fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| VolumeSpec::parse(&t).map_err(|e| e.to_string()))
        {
            Ok(spec) if spec.name == name => specs.push(spec),
            Ok(spec) => problems.push(format!(
                "volumes: {} declares volume {:?}; left out",
                path.display(),
                spec.name
            )),
            Err(e) => problems.push(format!("volumes: {}: {e}; left out", path.display())),
        }
    }
    (specs, problems)
}

/// The volumes in effect: the root's in order, each replaced by user-data's table of the
/// same name, then user-data's new ones. Also returns the names user-data replaced.
pub fn merge(root: Vec<VolumeSpec>, user: Vec<VolumeSpec>) -> (Vec<VolumeSpec>, Vec<String>) {
    let mut replaced = Vec::new();
    let mut merged: Vec<VolumeSpec> = root;
    for spec in user {
        match merged.iter_mut().find(|m| m.name == spec.name) {
            Some(slot) => {
                replaced.push(spec.name.clone());
                *slot = spec;
            }
            None => merged.push(spec),
        }
    }
    (merged, replaced)
}

/// The config phase's check: user-data that declares volumes or mounts them into the
/// containers it adds needs the image's `volumes` permission (for user-data from outside
/// the image), and every volume it mounts must be declared (by the image or by itself).
pub fn check_user_data(
    root: &Path,
    volumes: &[Volume],
    services: &[Service],
    policy: Option<&Policy>,
) -> Result<(), SchemaError> {
    let mounting = services
        .iter()
        .enumerate()
        .find(|(_, s)| !s.mounts.is_empty());
    if let Some(policy) = policy
        && !policy.allows(Permission::Volumes)
    {
        let refuse = |field: String, what: &str| {
            SchemaError::new(
                field,
                format!(
                    "this image does not let user-data {what} (its profile's [config] allow \
                     lacks \"volumes\")"
                ),
            )
        };
        if !volumes.is_empty() {
            return Err(refuse(
                user_volumes::field(0, ""),
                "declare volumes, which formats empty disks and hands disks to containers",
            ));
        }
        if let Some((i, _)) = mounting {
            return Err(refuse(
                user_services::field(i, "mounts"),
                "mount volumes into containers",
            ));
        }
    }
    let (root_specs, _) = load_root(root);
    let (merged, _) = merge(root_specs, user_volumes::specs(volumes));
    for (i, s) in services.iter().enumerate() {
        for (j, m) in s.mounts.iter().enumerate() {
            if !merged.iter().any(|v| v.name == m.volume) {
                let names: Vec<&str> = merged.iter().map(|v| v.name.as_str()).collect();
                return Err(SchemaError::new(
                    user_services::field(i, &format!("mounts[{j}].volume")),
                    format!(
                        "no volume is named {:?} (declared: {})",
                        m.volume,
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// How the phase line names a volume: `db (serial data1, ext4)`.
pub fn describe(spec: &VolumeSpec) -> String {
    let disks = match &spec.disks {
        Disks::Unnamed => "no disk named yet".to_owned(),
        other => other.to_string(),
    };
    format!("{} ({disks}, {})", spec.name, spec.filesystem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::parse;
    use crust_format::volume::{Filesystem, Format};

    fn root_with(specs: &[VolumeSpec]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join(VOLUMES_DIR);
        fs::create_dir_all(&d).unwrap();
        for s in specs {
            fs::write(d.join(&s.name), s.to_text()).unwrap();
        }
        dir
    }

    fn spec(name: &str, disks: Disks) -> VolumeSpec {
        VolumeSpec {
            name: name.into(),
            disks,
            filesystem: Filesystem::Ext4,
            mount_options: Vec::new(),
            format: Format::IfEmpty,
        }
    }

    #[test]
    fn user_data_replaces_and_adds() {
        let root = root_with(&[
            spec("db", Disks::Unnamed),
            spec("cache", Disks::InstanceStores),
        ]);
        let (specs, problems) = load_root(root.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name, "cache", "sorted by name");
        let (merged, replaced) = merge(
            specs,
            vec![
                spec("db", Disks::Serial(vec!["vol1".into()])),
                spec("logs", Disks::Label("logs".into())),
            ],
        );
        let names: Vec<&str> = merged.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["cache", "db", "logs"]);
        assert_eq!(merged[1].disks, Disks::Serial(vec!["vol1".into()]));
        assert_eq!(replaced, ["db"]);
        assert_eq!(
            describe(&merged[0]),
            "cache (every NVMe instance store, ext4)"
        );
    }

    #[test]
    fn user_data_volumes_need_the_permission_and_mounts_a_declared_volume() {
        let root = root_with(&[spec("db", Disks::Unnamed)]);
        let c = parse(
            "version = 1\n[[volume]]\nname = \"scratch\"\nserial = \"s1\"\n\
             [[service]]\nname = \"x\"\nimage.service = \"web\"\n\
             mounts = [{ volume = \"db\", target = \"/srv\" }, { volume = \"scratch\", target = \"/tmp/s\" }]\n",
        )
        .unwrap();
        let without = Policy::default();
        let e = check_user_data(root.path(), &c.volume, &c.service, Some(&without)).unwrap_err();
        assert_eq!(e.field, "volume[0]");
        assert!(e.message.contains("lacks \"volumes\""), "{e}");
        let e = check_user_data(root.path(), &[], &c.service, Some(&without)).unwrap_err();
        assert_eq!(e.field, "service[0].mounts");
        let with = Policy {
            allow: vec![Permission::Services, Permission::Volumes],
            ..Policy::default()
        };
        check_user_data(root.path(), &c.volume, &c.service, Some(&with)).unwrap();
        // The image's own default needs no permission, but still a declared volume.
        let e = check_user_data(root.path(), &[], &c.service, None).unwrap_err();
        assert_eq!(e.field, "service[0].mounts[1].volume");
        assert!(e.message.contains("declared: db"), "{e}");
    }
}
