//! Where user-data comes from: the kernel command line, a NoCloud seed, the installer's
//! signed user-data on the ESP, EC2's IMDS, the image's default. The image's policy ([`super::trust`]) says which are tried, in which
//! order; the first that has user-data wins.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crust_format::user_data::Source;

use crate::cmdline;

/// The command line option carrying user-data.
pub const CMDLINE_KEY: &str = "crust.config";
/// The configuration the image carries, in the verified root.
pub const IMAGE_DEFAULT: &str = "/usr/lib/crust/config.toml";

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `crust.config=` on the kernel command line.
    Cmdline,
    /// A NoCloud seed on this device.
    NoCloud(String),
    /// The installer's signed user-data on the boot disk's ESP (this device).
    Install(String),
    /// EC2's instance metadata service.
    Imds,
    /// The image's default file.
    Image,
    /// Nothing anywhere: every setting at its default.
    BuiltIn,
}

impl Origin {
    /// The policy's name for the source (none for the built-in defaults).
    pub fn source(&self) -> Option<Source> {
        match self {
            Origin::Cmdline => Some(Source::Cmdline),
            Origin::NoCloud(_) => Some(Source::NoCloud),
            Origin::Install(_) => Some(Source::Install),
            Origin::Imds => Some(Source::Imds),
            Origin::Image => Some(Source::Image),
            Origin::BuiltIn => None,
        }
    }

    /// A short stable name (`/run/crust/config-source`, logs).
    pub fn name(&self) -> &'static str {
        match self {
            Origin::Cmdline => "cmdline",
            Origin::NoCloud(_) => "nocloud",
            Origin::Install(_) => "install",
            Origin::Imds => "imds",
            Origin::Image => "image",
            Origin::BuiltIn => "built-in",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Cmdline => write!(f, "kernel command line ({CMDLINE_KEY}=)"),
            Origin::NoCloud(device) => write!(f, "NoCloud seed {device}"),
            Origin::Install(device) => write!(
                f,
                "installer's user-data {device}:/{}",
                crust_format::install::ESP_DIR
            ),
            Origin::Imds => f.write_str("EC2 IMDS"),
            Origin::Image => write!(f, "image default {IMAGE_DEFAULT}"),
            Origin::BuiltIn => f.write_str("built-in defaults"),
        }
    }
}

/// The base64 flavour of `crust.config=`: the standard alphabet, padding optional (a
/// command line word may lose its `=` signs to careless quoting).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The user-data on a kernel command line: `None` without `crust.config=`, an error when
/// it is not base64.
pub fn from_cmdline(cmdline: &str) -> Option<Result<Vec<u8>, String>> {
    let prefix = format!("{CMDLINE_KEY}=");
    let value = cmdline::words(cmdline)
        .into_iter()
        .rev()
        .find_map(|w| w.strip_prefix(&prefix).map(str::to_owned))?;
    Some(
        BASE64
            .decode(value.trim())
            .map_err(|e| format!("{CMDLINE_KEY}= is not base64 ({e})")),
    )
}

/// User-data bytes as text, refusing what is not UTF-8 TOML before it is parsed.
pub fn to_text(bytes: Vec<u8>) -> Result<String, String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err("the user-data is gzip-compressed; Crust reads plain TOML".into());
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the user-data is not UTF-8 text (byte {} is not)",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Reads `path` whole if it holds at most `limit` bytes (`None` when there is no such
/// file); errors call it `shown` (a seed's or the ESP's name for it). Never reads more than
/// `limit + 1` bytes, whatever the file claims.
pub fn read_bounded(path: &Path, shown: &str, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {shown}: {e}")),
    };
    let mut data = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if data.len() as u64 > limit {
        return Err(format!("{shown} is larger than {limit} bytes"));
    }
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_read_names_the_file_and_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user-data");
        assert_eq!(
            read_bounded(&path, "EFI/crust/install/user-data", 4),
            Ok(None)
        );
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(
            read_bounded(&path, "EFI/crust/install/user-data", 4),
            Err("EFI/crust/install/user-data is larger than 4 bytes".into())
        );
        assert_eq!(
            read_bounded(&path, "user-data", 5),
            Ok(Some(b"12345".to_vec()))
        );
        let err = read_bounded(Path::new("/dev/zero"), "user-data", 1 << 10).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn the_command_line_carries_base64() {
        // `printf 'version = 1\nhostname = "a"\n' | base64 -w0`
        let line = "console=ttyS0 crust.config=dmVyc2lvbiA9IDEKaG9zdG5hbWUgPSAiYSIK quiet";
        assert_eq!(
            from_cmdline(line).unwrap().unwrap(),
            b"version = 1\nhostname = \"a\"\n"
        );
        // Padding may be dropped; the last occurrence wins, as for kernel options.
        let line = "crust.config=eA== crust.config=dmVyc2lvbiA9IDEK";
        assert_eq!(from_cmdline(line).unwrap().unwrap(), b"version = 1\n");
        assert_eq!(from_cmdline("crust.config=eA").unwrap().unwrap(), b"x");
        assert!(from_cmdline("console=ttyS0 crust.reboot_delay=3").is_none());
        let bad = from_cmdline("crust.config=not*base64")
            .unwrap()
            .unwrap_err();
        assert!(bad.contains("crust.config= is not base64"), "{bad}");
    }

    #[test]
    fn bytes_must_be_text() {
        assert_eq!(to_text(b"version = 1\n".to_vec()).unwrap(), "version = 1\n");
        assert!(
            to_text(vec![0x1f, 0x8b, 8, 0])
                .unwrap_err()
                .contains("gzip")
        );
        assert!(to_text(vec![b'a', 0xff]).unwrap_err().contains("byte 1"));
    }

    #[test]
    fn origins_name_themselves() {
        assert_eq!(
            Origin::NoCloud("/dev/vdb".into()).to_string(),
            "NoCloud seed /dev/vdb"
        );
        assert_eq!(Origin::Imds.name(), "imds");
        assert_eq!(
            Origin::Install("/dev/vda1".into()).to_string(),
            "installer's user-data /dev/vda1:/EFI/crust/install"
        );
        assert_eq!(Origin::Install("/dev/vda1".into()).name(), "install");
    }
}
