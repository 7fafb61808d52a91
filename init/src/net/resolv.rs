//! `/etc/resolv.conf`: the name servers and search domains the network configuration
//! found, for the host's own lookups (musl reads it) and for containers, which get a copy.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::Path;

/// The file.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The resolvers of glibc and musl read at most three name servers.
pub const MAX_NAMESERVERS: usize = 3;

/// The file's text: unique name servers (first three) and search domains, in order.
pub fn render(nameservers: &[IpAddr], search: &[String]) -> String {
    let mut text = String::from("# Written by crust-init from the network configuration.\n");
    let mut seen = Vec::new();
    for ns in nameservers {
        if !seen.contains(ns) && seen.len() < MAX_NAMESERVERS {
            seen.push(*ns);
            text.push_str(&format!("nameserver {ns}\n"));
        }
    }
    let mut domains: Vec<&str> = Vec::new();
    for d in search {
        if !domains.contains(&d.as_str()) {
            domains.push(d);
        }
    }
    if !domains.is_empty() {
        text.push_str(&format!("search {}\n", domains.join(" ")));
    }
    text
}

/// Writes `text` to `path`. A regular file is rewritten in place, in one `write`, so that
/// containers which bind-mounted it see the change (a rename would leave them the old
/// inode); anything else (absent, a symlink into a resolver daemon's directory) is
/// replaced by a new file atomically.
pub fn write(path: &Path, text: &str) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {
            if fs::read_to_string(path).is_ok_and(|old| old == text) {
                return Ok(());
            }
            fs::write(path, text)
        }
        _ => {
            let tmp = path.with_extension("crust-tmp");
            fs::write(&tmp, text)?;
            fs::rename(&tmp, path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_unique_and_at_most_three() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let text = render(
            &[
                ip("10.0.2.3"),
                ip("10.0.2.3"),
                ip("2001:db8::53"),
                ip("1.1.1.1"),
                ip("8.8.8.8"),
            ],
            &["a.example".into(), "a.example".into(), "b.example".into()],
        );
        assert_eq!(
            text,
            "# Written by crust-init from the network configuration.\n\
             nameserver 10.0.2.3\nnameserver 2001:db8::53\nnameserver 1.1.1.1\n\
             search a.example b.example\n"
        );
    }

    #[test]
    fn writes_replace_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink("/nonexistent/stub-resolv.conf", &path).unwrap();
        write(&path, "nameserver 10.0.2.3\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "nameserver 10.0.2.3\n");
        assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
        // Now a file: rewritten in place, same inode (bind mounts follow).
        use std::os::unix::fs::MetadataExt;
        let inode = fs::metadata(&path).unwrap().ino();
        write(&path, "nameserver 10.0.2.4\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "nameserver 10.0.2.4\n");
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
    }
}
