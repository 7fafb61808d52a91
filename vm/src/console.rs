//! The serial console as a stream of lines, and the lines that mean a boot went wrong.
//!
//! A reader thread splits QEMU's serial output into lines, appends each to a log file and
//! hands it to the test through a channel. Every wait fails as soon as a fatal line shows
//! up (a kernel panic, an Oops, a BUG, a segfault, or an error line of the init), as
//! Flatcar's kola does, with the console's tail in the error.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Console text that fails any boot that did not expect it.
pub const FATAL: &[&str] = &[
    "Kernel panic",
    "Oops",
    "BUG:",
    "segfault",
    "] crust: error:",
];

/// The fatal pattern in `line`, if any.
pub fn fatal_in(line: &str) -> Option<&'static str> {
    FATAL.iter().copied().find(|p| line.contains(p))
}

/// A console being read.
#[derive(Debug)]
pub struct Console {
    lines: Receiver<String>,
    history: Vec<String>,
    /// Fatal patterns a test expects (a tamper test expects the init's error line).
    allowed: Vec<String>,
}

/// Why a wait ended without its line.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// A fatal line appeared.
    #[error("fatal console output ({pattern}): {line}\n--- console tail ---\n{tail}")]
    Fatal {
        /// Which pattern.
        pattern: &'static str,
        /// The line.
        line: String,
        /// The last lines before it.
        tail: String,
    },
    /// The time ran out.
    #[error("no {what} within {timeout:?}\n--- console tail ---\n{tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The bound.
        timeout: Duration,
        /// The last lines.
        tail: String,
    },
    /// The machine stopped (QEMU exited).
    #[error("QEMU exited before {what}\n--- console tail ---\n{tail}")]
    Closed {
        /// What was awaited.
        what: String,
        /// The last lines.
        tail: String,
    },
}

impl Console {
    /// Starts reading `output`; every line is also appended to `log` if given, and echoed
    /// to stderr when `echo` is set.
    pub fn spawn(
        output: impl Read + Send + 'static,
        log: Option<&Path>,
        echo: bool,
    ) -> Result<Self> {
        let mut log = match log {
            Some(p) => Some(File::create(p)?),
            None => None,
        };
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(output);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .replace('\r', "");
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                if echo {
                    eprintln!("{line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            lines: rx,
            history: Vec::new(),
            allowed: Vec::new(),
        })
    }

    /// Lets lines with `pattern` through (for tests that expect a failure).
    pub fn allow(&mut self, pattern: &str) {
        self.allowed.push(pattern.to_owned());
    }

    /// Every line seen so far.
    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.history.len().saturating_sub(n);
        self.history[start..].join("\n")
    }

    /// Waits for a line matching `want`, failing on fatal lines, timeout or end of output.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Result<String, WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.history.push(line.clone());
                    if let Some(pattern) = fatal_in(&line)
                        && !self.allowed.iter().any(|a| line.contains(a.as_str()))
                    {
                        return Err(WaitError::Fatal {
                            pattern,
                            line,
                            tail: self.tail(40),
                        });
                    }
                    if want(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(WaitError::Timeout {
                        what: what.to_owned(),
                        timeout,
                        tail: self.tail(40),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(WaitError::Closed {
                        what: what.to_owned(),
                        tail: self.tail(40),
                    });
                }
            }
        }
    }

    /// Reads the rest of the output (until QEMU closes it or `timeout`), checking it too.
    pub fn drain(&mut self, timeout: Duration) -> Result<()> {
        match self.wait_for("end of output", timeout, |_| false) {
            Err(WaitError::Closed { .. }) => Ok(()),
            Err(e) => bail!(e),
            Ok(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_fail_on_fatal_lines_unless_allowed() {
        let text = "booting\n[ 1.0] Kernel panic - not syncing: VFS\nlater\n";
        let mut c =
            Console::spawn(std::io::Cursor::new(text.as_bytes().to_vec()), None, false).unwrap();
        let err = c
            .wait_for("later", Duration::from_secs(5), |l| l == "later")
            .unwrap_err();
        assert!(
            matches!(
                err,
                WaitError::Fatal {
                    pattern: "Kernel panic",
                    ..
                }
            ),
            "{err}"
        );

        let mut c =
            Console::spawn(std::io::Cursor::new(text.as_bytes().to_vec()), None, false).unwrap();
        c.allow("Kernel panic");
        assert_eq!(
            c.wait_for("later", Duration::from_secs(5), |l| l == "later")
                .unwrap(),
            "later"
        );
        assert!(matches!(
            c.wait_for("more", Duration::from_secs(5), |_| true),
            Err(WaitError::Closed { .. })
        ));
    }

    #[test]
    fn init_error_lines_are_fatal() {
        assert_eq!(
            fatal_in("[    3.000000] crust: error: manifest: bad signature"),
            Some("] crust: error:")
        );
        assert_eq!(fatal_in("[    3.000000] crust: ready: crust 0.1.0"), None);
    }
}
