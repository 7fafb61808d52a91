//! `[[volume]]` in user-data: data disks the host formats (only when empty), checks and
//! mounts under `/var/mnt/<name>` ([`crust_format::volume`]).
//!
//! This module checks what needs nothing but the text: one way of naming the disks, each
//! value's form, unique names. A table whose name is a volume of the image replaces the
//! image's declaration (the image declares a volume and the services that mount it; the
//! host's user-data says which disk it is). Whether user-data may declare volumes at all is
//! the image's policy ([`crate::volumes::check_user_data`], in the same config phase).

use std::collections::BTreeSet;

use crust_format::volume::{
    Disks, Filesystem, Format, INSTANCE_STORES, MAX_DISKS, VolumeSpec, check_by_id,
};
use serde::Deserialize;

use super::schema::SchemaError;

/// One `[[volume]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Volume {
    /// The volume's name (`/var/mnt/<name>`).
    pub name: String,
    /// `/dev/disk/by-id/…` paths.
    #[serde(default)]
    pub disk: Option<OneOrMany>,
    /// Serial numbers.
    #[serde(default)]
    pub serial: Option<OneOrMany>,
    /// World wide names.
    #[serde(default)]
    pub wwn: Option<OneOrMany>,
    /// A file system or GPT partition label.
    #[serde(default)]
    pub label: Option<String>,
    /// `"nvme-instance-store"`: every unused NVMe instance store.
    #[serde(default)]
    pub disks: Option<String>,
    /// `ext4` (the default) or `xfs`.
    #[serde(default)]
    pub filesystem: Option<FilesystemName>,
    /// Mount options (`noatime`, `discard`, …).
    #[serde(default)]
    pub mount_options: Vec<String>,
    /// `if-empty` (the default) or `never`.
    #[serde(default)]
    pub format: Option<FormatName>,
}

/// One string or a list of them (several disks make a RAID 0).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One disk.
    One(String),
    /// Several disks.
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `filesystem`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilesystemName {
    /// ext4.
    Ext4,
    /// XFS.
    Xfs,
}

/// `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FormatName {
    /// Only an empty disk.
    IfEmpty,
    /// Never.
    Never,
}

/// The field path of entry `i`'s `field`, as the TOML parser names them.
pub fn field(i: usize, field: &str) -> String {
    if field.is_empty() {
        format!("volume[{i}]")
    } else {
        format!("volume[{i}].{field}")
    }
}

impl Volume {
    /// The declaration, checked; the error is the key and what is wrong.
    pub fn to_spec(&self) -> Result<VolumeSpec, (&'static str, String)> {
        let chosen: Vec<&'static str> = [
            ("disk", self.disk.is_some()),
            ("serial", self.serial.is_some()),
            ("wwn", self.wwn.is_some()),
            ("label", self.label.is_some()),
            ("disks", self.disks.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        let disks = match chosen.as_slice() {
            [] => {
                return Err((
                    "name",
                    "name its disk: disk = \"/dev/disk/by-id/…\", serial = \"…\", wwn = \"…\", \
                     label = \"…\" or disks = \"nvme-instance-store\""
                        .into(),
                ));
            }
            [_] => {
                if let Some(d) = &self.disk {
                    let names = d
                        .clone()
                        .into_vec()
                        .iter()
                        .map(|p| check_by_id(p))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|m| ("disk", m))?;
                    Disks::ById(names)
                } else if let Some(s) = &self.serial {
                    Disks::Serial(s.clone().into_vec())
                } else if let Some(w) = &self.wwn {
                    Disks::Wwn(w.clone().into_vec())
                } else if let Some(l) = &self.label {
                    Disks::Label(l.clone())
                } else {
                    match self.disks.as_deref() {
                        Some(INSTANCE_STORES) => Disks::InstanceStores,
                        other => {
                            return Err((
                                "disks",
                                format!(
                                    "{:?} is not \"{INSTANCE_STORES}\" (name other disks with \
                                     disk, serial or wwn, as a list for a RAID 0)",
                                    other.unwrap_or_default()
                                ),
                            ));
                        }
                    }
                }
            }
            [first, second, ..] => {
                return Err((
                    second,
                    format!("name the disks one way: {first} or {second}, not both"),
                ));
            }
        };
        let spec = VolumeSpec {
            name: self.name.clone(),
            disks,
            filesystem: match self.filesystem {
                None | Some(FilesystemName::Ext4) => Filesystem::Ext4,
                Some(FilesystemName::Xfs) => Filesystem::Xfs,
            },
            mount_options: self.mount_options.clone(),
            format: match self.format {
                None | Some(FormatName::IfEmpty) => Format::IfEmpty,
                Some(FormatName::Never) => Format::Never,
            },
        };
        spec.check().map_err(|e| {
            let key = match e.field.as_str() {
                "name" => "name",
                "disk" => "disk",
                "serial" => "serial",
                "wwn" => "wwn",
                "label" => "label",
                _ => "mount-options",
            };
            (key, e.message)
        })?;
        Ok(spec)
    }
}

/// Checks the tables on their own (forms, one way of naming disks, unique names).
pub fn validate(volumes: &[Volume]) -> Result<(), SchemaError> {
    let mut seen = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        v.to_spec()
            .map_err(|(f, m)| SchemaError::new(field(i, f), m))?;
        if !seen.insert(v.name.as_str()) {
            return Err(SchemaError::new(
                field(i, "name"),
                format!("{:?} is named twice", v.name),
            ));
        }
    }
    if volumes.len() > MAX_DISKS {
        return Err(SchemaError::new(
            "volume",
            format!("at most {MAX_DISKS} volumes"),
        ));
    }
    Ok(())
}

/// The user-data's declarations, checked (call after [`validate`]).
pub fn specs(volumes: &[Volume]) -> Vec<VolumeSpec> {
    volumes.iter().filter_map(|v| v.to_spec().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::super::schema::parse;
    use super::*;

    fn field_of(text: &str) -> String {
        parse(&format!("version = 1\n{text}")).unwrap_err().field
    }

    #[test]
    fn volumes_parse() {
        let c = parse(
            r#"version = 1
[[volume]]
name = "db"
disk = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"
filesystem = "xfs"
mount-options = ["noatime"]

[[volume]]
name = "cache"
disks = "nvme-instance-store"

[[volume]]
name = "pair"
serial = ["a1", "a2"]
format = "never"
"#,
        )
        .unwrap();
        let specs = specs(&c.volume);
        assert_eq!(specs.len(), 3);
        assert_eq!(
            specs[0].disks,
            Disks::ById(vec![
                "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0".into()
            ])
        );
        assert_eq!(specs[0].filesystem, Filesystem::Xfs);
        assert_eq!(specs[1].disks, Disks::InstanceStores);
        assert_eq!(specs[1].filesystem, Filesystem::Ext4);
        assert_eq!(
            specs[2].disks,
            Disks::Serial(vec!["a1".into(), "a2".into()])
        );
        assert_eq!(specs[2].format, Format::Never);
    }

    #[test]
    fn bad_volumes_name_the_field() {
        for (text, field) in [
            (
                "[[volume]]\nname = \"Db\"\nserial = \"x\"\n",
                "volume[0].name",
            ),
            ("[[volume]]\nname = \"db\"\n", "volume[0].name"),
            (
                "[[volume]]\nname = \"db\"\nserial = \"x\"\nlabel = \"y\"\n",
                "volume[0].label",
            ),
            (
                "[[volume]]\nname = \"db\"\ndisk = \"/dev/sdb\"\n",
                "volume[0].disk",
            ),
            (
                "[[volume]]\nname = \"db\"\ndisks = \"all\"\n",
                "volume[0].disks",
            ),
            (
                "[[volume]]\nname = \"db\"\nserial = \"x\"\nfilesystem = \"btrfs\"\n",
                "volume[0].filesystem",
            ),
            (
                "[[volume]]\nname = \"db\"\nserial = \"x\"\nformat = \"always\"\n",
                "volume[0].format",
            ),
            (
                "[[volume]]\nname = \"db\"\nserial = \"x\"\nmount-options = [\"exec\"]\n",
                "volume[0].mount-options",
            ),
            (
                "[[volume]]\nname = \"db\"\nwwn = \"0xgg\"\n",
                "volume[0].wwn",
            ),
            (
                "[[volume]]\nname = \"db\"\nserial = [\"x\", \"x\"]\n",
                "volume[0].serial",
            ),
            (
                "[[volume]]\nname = \"db\"\nserial = \"x\"\n[[volume]]\nname = \"db\"\nserial = \"y\"\n",
                "volume[1].name",
            ),
            (
                "[[volume]]\nname = \"db\"\nserial = \"x\"\ncolour = \"red\"\n",
                "volume[0].colour",
            ),
        ] {
            assert_eq!(field_of(text), field, "{text}");
        }
    }
}
