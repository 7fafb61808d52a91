//! The `crust.*` options of the kernel command line.
//!
//! The command line is part of the UKI (so it is covered by the same signature as the
//! kernel); it tunes timeouts only. A bad or unknown `crust.` option is reported as a
//! warning and otherwise ignored: refusing to boot over a typo would be worse.

use std::time::Duration;

/// Where the kernel shows its command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

/// Default pause between an error line and the reboot, so a person can read it.
pub const DEFAULT_REBOOT_DELAY: Duration = Duration::from_secs(10);
/// Default time to wait for the boot disk to appear.
pub const DEFAULT_DISK_TIMEOUT: Duration = Duration::from_secs(30);

/// The init's options, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `crust.reboot_delay=SECS`: pause after an error before rebooting.
    pub reboot_delay: Duration,
    /// `crust.disk_timeout=SECS`: how long to wait for the boot disk.
    pub disk_timeout: Duration,
    /// `crust.install`: run the installer instead of booting a root (the installer UKI).
    pub install: bool,
    /// `crust.netboot`: a network-booted host (the netboot UKI).
    pub netboot: bool,
    /// `crust.netboot.url=URL`: the folder a network-booted host fetches `root.img` and
    /// `verity.img` from (checked when used, by `netboot::source`).
    pub netboot_url: Option<String>,
    /// One message per option that was ignored.
    pub warnings: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            reboot_delay: DEFAULT_REBOOT_DELAY,
            disk_timeout: DEFAULT_DISK_TIMEOUT,
            install: false,
            netboot: false,
            netboot_url: None,
            warnings: Vec::new(),
        }
    }
}

impl Options {
    /// Reads `/proc/cmdline` (which must be mounted); defaults and a warning if it cannot.
    pub fn read() -> Self {
        match std::fs::read_to_string(PROC_CMDLINE) {
            Ok(text) => Self::parse(&text),
            Err(e) => Self {
                warnings: vec![format!("cannot read {PROC_CMDLINE} ({e}); using defaults")],
                ..Self::default()
            },
        }
    }

    /// Parses a kernel command line.
    pub fn parse(cmdline: &str) -> Self {
        let mut options = Self::default();
        for word in words(cmdline) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            // The kernel treats '-' and '_' in parameter names alike; so do we.
            let Some(name) = key.strip_prefix("crust.").map(|n| n.replace('-', "_")) else {
                continue;
            };
            let target = match name.as_str() {
                // User-data, read by `config::source` in stage 2.
                "config" => continue,
                // The installer and netboot UKIs' words (crust_format::install).
                "install" if value.is_none() => {
                    options.install = true;
                    continue;
                }
                "netboot" if value.is_none() => {
                    options.netboot = true;
                    continue;
                }
                "netboot.url" => {
                    match value.filter(|v| !v.is_empty()) {
                        Some(url) => options.netboot_url = Some(url.to_owned()),
                        None => options.warnings.push(format!(
                            "kernel command line option {word:?} needs a URL (ignored)"
                        )),
                    }
                    continue;
                }
                "reboot_delay" => &mut options.reboot_delay,
                "disk_timeout" => &mut options.disk_timeout,
                _ => {
                    options.warnings.push(format!(
                        "unknown kernel command line option {key:?} (ignored)"
                    ));
                    continue;
                }
            };
            match value.and_then(|v| v.parse::<u32>().ok()) {
                Some(secs) => *target = Duration::from_secs(u64::from(secs)),
                None => options.warnings.push(format!(
                    "kernel command line option {word:?} needs a number of seconds (ignored)"
                )),
            }
        }
        options
    }
}

/// Splits a command line into words as the kernel does: on whitespace, except inside
/// double quotes, which are dropped (`a="b c"` is the word `a=b c`).
pub fn words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_nothing_is_set() {
        let o = Options::parse("console=ttyS0 panic=10 quiet\n");
        assert_eq!(o, Options::default());
    }

    #[test]
    fn reads_known_options() {
        let o = Options::parse("quiet crust.reboot_delay=3 crust.disk-timeout=120\n");
        assert_eq!(o.reboot_delay, Duration::from_secs(3));
        assert_eq!(o.disk_timeout, Duration::from_secs(120));
        assert!(o.warnings.is_empty());
    }

    #[test]
    fn warns_about_unknown_and_bad_options() {
        let o = Options::parse("crust.colour=blue crust.reboot_delay=soon crust.disk_timeout");
        assert_eq!(o.reboot_delay, DEFAULT_REBOOT_DELAY);
        assert_eq!(o.disk_timeout, DEFAULT_DISK_TIMEOUT);
        assert_eq!(o.warnings.len(), 3);
        assert!(o.warnings[0].contains("unknown kernel command line option \"crust.colour\""));
        assert!(o.warnings[1].contains("crust.reboot_delay=soon"));
    }

    #[test]
    fn reads_the_netboot_url() {
        let o = Options::parse("crust.netboot crust.netboot.url=https://boot.example/crust/\n");
        assert!(o.netboot && o.warnings.is_empty());
        assert_eq!(
            o.netboot_url.as_deref(),
            Some("https://boot.example/crust/")
        );
        let o = Options::parse("crust.netboot.url= crust.netboot.url");
        assert_eq!(o.netboot_url, None);
        assert_eq!(o.warnings.len(), 2, "{:?}", o.warnings);
    }

    #[test]
    fn splits_words_like_the_kernel() {
        assert_eq!(
            words(" a  b=\"c d\" \"e f\"\tg\n"),
            ["a", "b=c d", "e f", "g"]
        );
        assert_eq!(words("x=\"\""), ["x="]);
        assert!(words("   ").is_empty());
    }
}
