//! The writing end of the log pipe: every console line (phase lines, warnings, the update
//! agent's, the clock's, the agents' own) and every service output line, as a
//! [`Record`] for the shipper.
//!
//! Until the config phase says whether `[logs]` is on, lines are kept in memory (at most
//! [`EARLY_LIMIT`] bytes; stage 1 leaves its lines in [`STAGE1_LINES`] for stage 2 to take
//! over), so the collector gets the whole boot. Then they go to the pipe, or nowhere. A
//! write never waits: the pipe is non-blocking, each record fits in `PIPE_BUF` (written
//! whole or not at all), and a record that finds the pipe full is dropped and counted; the
//! count goes into the pipe, as a warning record, ahead of the next record that fits.
//!
//! Console lines come from the main loop and from worker threads alike, hence the lock; it
//! is held for one `write` at most.

use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Duration;

use crust_format::observe::{Facility, Record, Severity};

/// Early lines kept before the config phase, in bytes.
pub const EARLY_LIMIT: usize = 256 * 1024;
/// Where stage 1 leaves its lines (on the `/run` tmpfs, which stage 2 keeps).
pub const STAGE1_LINES: &str = "/run/crust/console-stage1";

#[derive(Debug)]
enum Sink {
    /// Before the config phase: lines in memory (pipe lines, newline included).
    Collecting {
        lines: Vec<String>,
        bytes: usize,
        dropped: u64,
    },
    /// `[logs]` is on: the pipe's writing end.
    Pipe { fd: OwnedFd, dropped: u64 },
    /// No `[logs]`.
    Off,
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Collecting {
    lines: Vec::new(),
    bytes: 0,
    dropped: 0,
});
/// Records dropped at a full pipe since boot (for the status file).
static DROPPED_TOTAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn sink() -> std::sync::MutexGuard<'static, Sink> {
    SINK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A record of the init's own (`crust`).
pub fn own(at: Duration, severity: Severity, msgid: &str, msg: &str) -> Record {
    Record {
        monotonic_us: u64::try_from(at.as_micros()).unwrap_or(u64::MAX),
        facility: Facility::Daemon,
        severity,
        app: "crust".into(),
        msgid: msgid.into(),
        msg: msg.into(),
    }
}

/// A service's output line.
pub fn service(at: Duration, name: &str, msg: &str) -> Record {
    Record {
        monotonic_us: u64::try_from(at.as_micros()).unwrap_or(u64::MAX),
        facility: Facility::User,
        severity: Severity::Info,
        app: name.into(),
        msgid: "-".into(),
        msg: msg.into(),
    }
}

fn dropped_note(n: u64, why: &str) -> String {
    own(
        crate::console::now(),
        Severity::Warning,
        "logs",
        &format!("logs: {n} lines were dropped on the way to the log shipper ({why})"),
    )
    .to_line()
}

/// Writes one line whole, or nothing.
fn write_whole(fd: &OwnedFd, line: &str) -> bool {
    loop {
        match nix::unistd::write(fd, line.as_bytes()) {
            Ok(n) => return n == line.len(),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// Hands a record on (or keeps it, or drops it, as the state says).
pub fn record(r: &Record) {
    let mut s = sink();
    match &mut *s {
        Sink::Off => {}
        Sink::Collecting {
            lines,
            bytes,
            dropped,
        } => {
            let line = r.to_line();
            if *bytes + line.len() > EARLY_LIMIT {
                *dropped += 1;
            } else {
                *bytes += line.len();
                lines.push(line);
            }
        }
        Sink::Pipe { fd, dropped } => {
            if *dropped > 0 {
                if !write_whole(fd, &dropped_note(*dropped, "its pipe was full")) {
                    *dropped += 1;
                    DROPPED_TOTAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                *dropped = 0;
            }
            if !write_whole(fd, &r.to_line()) {
                *dropped += 1;
                DROPPED_TOTAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// `[logs]` is on: the early lines go into the pipe, and every line from now on.
pub fn connect(fd: OwnedFd) {
    let mut s = sink();
    let (lines, early_dropped) = match std::mem::replace(&mut *s, Sink::Off) {
        Sink::Collecting { lines, dropped, .. } => (lines, dropped),
        _ => (Vec::new(), 0),
    };
    let mut dropped = 0;
    if early_dropped > 0
        && !write_whole(
            &fd,
            &dropped_note(early_dropped, "too many before the config phase"),
        )
    {
        dropped += 1;
    }
    for line in lines {
        if !write_whole(&fd, &line) {
            dropped += 1;
        }
    }
    DROPPED_TOTAL.fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
    *s = Sink::Pipe { fd, dropped };
}

/// No `[logs]`: the early lines are let go, and nothing is kept from now on.
pub fn off() {
    *sink() = Sink::Off;
}

/// Lines dropped at a full pipe since boot.
pub fn dropped_total() -> u64 {
    DROPPED_TOTAL.load(std::sync::atomic::Ordering::Relaxed)
}

/// Stage 1, before it executes stage 2: its lines go to [`STAGE1_LINES`].
pub fn hand_over() {
    let text: String = match &*sink() {
        Sink::Collecting { lines, .. } => lines.concat(),
        _ => return,
    };
    let _ = std::fs::write(STAGE1_LINES, text);
}

/// Stage 2, first thing: stage 1's lines come before its own.
pub fn take_over() {
    let Ok(text) = std::fs::read_to_string(STAGE1_LINES) else {
        return;
    };
    let _ = std::fs::remove_file(STAGE1_LINES);
    if let Sink::Collecting { lines, bytes, .. } = &mut *sink() {
        let earlier: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
        let size: usize = earlier.iter().map(String::len).sum();
        if size + *bytes <= EARLY_LIMIT {
            *bytes += size;
            lines.splice(0..0, earlier);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sink is global: one test walks it through every state.
    #[test]
    fn lines_are_kept_then_piped_whole_and_drops_are_counted() {
        let at = Duration::from_micros(1_500_000);
        record(&own(at, Severity::Info, "init", "init: early"));
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        nix::fcntl::fcntl(
            &write,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        connect(write);
        record(&service(at, "web", "hello"));
        // Fill the pipe: the writer never waits, it counts.
        let big = "x".repeat(3000);
        for _ in 0..100 {
            record(&service(at, "web", &big));
        }
        assert!(dropped_total() > 0);
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        while let Ok(n) = nix::unistd::read(&read, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        record(&service(at, "web", "after"));
        while let Ok(n) = nix::unistd::read(&read, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(got).unwrap();
        let lines: Vec<Record> = text.lines().map(|l| Record::parse(l).unwrap()).collect();
        // Other tests of this process print console lines too: look for ours.
        let find = |f: &dyn Fn(&Record) -> bool| lines.iter().position(f);
        let early = find(&|r| r.msg == "init: early").expect("the early line");
        let hello = find(&|r| r.app == "web" && r.msg == "hello").expect("the first line");
        assert!(early < hello);
        let after = find(&|r| r.msg == "after").expect("the line after the drops");
        let last_big = lines
            .iter()
            .rposition(|r| r.app == "web" && r.msg.len() == 3000)
            .expect("some big lines fit");
        let note = find(&|r| r.msgid == "logs" && r.msg.contains("were dropped"))
            .expect("the count of dropped lines");
        assert!(last_big < note && note < after, "{last_big} {note} {after}");
        assert_eq!(lines[after].app, "web");
        off();
        record(&service(at, "web", "nowhere"));
    }
}
