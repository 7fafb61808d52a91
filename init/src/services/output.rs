//! A service's output: one pipe for its stdout and stderr, read without blocking, split
//! into lines that go to the console with the service's name and to a log file under
//! `/var/log/crust/` that is rotated to stay bounded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::console;

/// Where service logs go.
pub const LOG_DIR: &str = "/var/log/crust";
/// A log is rotated (to `<name>.log.1`) when it grows past this; at most twice this is kept.
pub const LOG_LIMIT: u64 = 1 << 20;
/// A line longer than this is cut (a runaway line must not grow PID 1's memory).
const MAX_LINE: usize = 4096;

/// The read end of a service's output pipe, with its partial last line.
#[derive(Debug)]
pub struct OutputPipe {
    fd: OwnedFd,
    pending: Vec<u8>,
}

impl OutputPipe {
    /// Makes a pipe; returns the reader and the writer end for the child's stdout/stderr.
    pub fn new() -> io::Result<(Self, OwnedFd)> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok((
            Self {
                fd: read,
                pending: Vec::new(),
            },
            write,
        ))
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads what is there; returns the complete lines and whether the writer closed.
    pub fn read_lines(&mut self) -> (Vec<String>, bool) {
        let mut buf = [0u8; 4096];
        let mut closed = false;
        loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break, // EAGAIN: nothing more now
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            lines.push(clean(&line[..line.len() - 1]));
        }
        if self.pending.len() > MAX_LINE || (closed && !self.pending.is_empty()) {
            lines.push(clean(&self.pending));
            self.pending.clear();
        }
        (lines, closed)
    }
}

fn clean(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_LINE)];
    String::from_utf8_lossy(cut)
        .chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .collect()
}

/// A service's log file, rotated at [`LOG_LIMIT`].
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl Log {
    /// The log of service `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            path: dir.join(format!("{name}.log")),
            file: None,
            size: 0,
        }
    }

    /// Appends a line (with a monotonic timestamp); a log that cannot be written is skipped
    /// (the console still has the line).
    pub fn write(&mut self, line: &str) {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                let _ = fs::create_dir_all(dir);
            }
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
            self.size = self
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map_or(0, |m| m.len());
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let now = console::now();
        let text = format!("[{:5}.{:06}] {line}\n", now.as_secs(), now.subsec_micros());
        if file.write_all(text.as_bytes()).is_ok() {
            self.size += text.len() as u64;
        }
        if self.size >= LOG_LIMIT {
            self.file = None;
            let _ = fs::rename(&self.path, self.path.with_extension("log.1"));
        }
    }
}

/// Appends `text` to the log file at `path`, first moving a file that reached
/// [`LOG_LIMIT`] to `<path>.1` (so each log takes at most twice the limit on `/var`);
/// synced, for logs that must survive a power cut.
pub fn append_bounded(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    if fs::metadata(path).is_ok_and(|m| m.len() >= LOG_LIMIT) {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        fs::rename(path, rotated)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_data()
}

/// Prints a service's line on the console: `[time] <name>: <line>` (and hands it to the
/// log shipper under the service's name).
pub fn to_console(name: &str, line: &str) {
    console::service(name, line);
}

/// Reads a pipe's pending output to the console and the log; returns whether it closed.
pub fn pump(name: &str, pipe: &mut OutputPipe, log: &mut Log) -> bool {
    let (lines, closed) = pipe.read_lines();
    for line in lines {
        to_console(name, &line);
        log.write(&line);
    }
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_partial_lines_kept() {
        let (mut pipe, write) = OutputPipe::new().unwrap();
        nix::unistd::write(&write, b"one\ntw").unwrap();
        assert_eq!(pipe.read_lines(), (vec!["one".to_string()], false));
        nix::unistd::write(&write, b"o\x1b[0m\n").unwrap();
        drop(write);
        assert_eq!(pipe.read_lines(), (vec!["two[0m".to_string()], true));
    }

    #[test]
    fn logs_rotate_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::new(dir.path(), "web");
        let line = "x".repeat(1000);
        for _ in 0..(LOG_LIMIT / 1000 + 10) {
            log.write(&line);
        }
        let current = fs::metadata(dir.path().join("web.log")).unwrap().len();
        let old = fs::metadata(dir.path().join("web.log.1")).unwrap().len();
        assert!(old >= LOG_LIMIT && current < LOG_LIMIT, "{old} {current}");
    }
}
