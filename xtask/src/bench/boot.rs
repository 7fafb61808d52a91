//! Booting a disk under QEMU to measure it: every console line stamped with its arrival,
//! and, for an image with a demo service, the moment the host first gets its page.
//!
//! Each boot starts from scratch: a new copy-on-write overlay over the disk and a fresh
//! copy of the firmware's variable store, so every boot is a first boot of the image as
//! built, and the image and the reference floor meet the same firmware state (the sealed
//! `/var`'s later boot is the exception: it boots the machine its first boot left). The console
//! is read on this thread, which only ever waits for the next line, so arrival times are
//! not skewed by anything else; the demo page is fetched on a second thread, from the
//! moment the init reports its services started (before that nothing can answer) until
//! it answers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crust_format::phase::{self, Phase};
use crust_vm::console::WaitError;
use crust_vm::firmware::Firmware;
use crust_vm::{Accel, Config, Vm};

use super::timeline::TimedLine;

/// When a measured boot is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The image is up: `ready`, then `healthy` if a service has a health check, and the
    /// demo page fetched (or given up on).
    Up,
    /// QEMU exits (the floor powers off).
    Exit,
}

/// A boot to measure.
#[derive(Debug, Clone)]
pub struct Boot<'a> {
    /// The raw disk.
    pub disk: &'a Path,
    /// A folder for the overlay, variable store and console log.
    pub work: &'a Path,
    /// The accelerator.
    pub accel: Accel,
    /// The guest port of the demo service to fetch, if any.
    pub demo_port: Option<u16>,
    /// When it ends.
    pub until: Until,
    /// Boot under OVMF's Secure Boot firmware, its variables from this store.
    pub secure_boot: Option<&'a Path>,
    /// A TPM 2.0 with its state in this folder.
    pub tpm: Option<&'a Path>,
    /// Boot the overlay and variables the last boot in `work` left (a later boot of the
    /// same machine) instead of fresh ones.
    pub keep_disk: bool,
}

/// What a boot showed.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// Every console line with its arrival.
    pub lines: Vec<TimedLine>,
    /// Seconds since power-on when the demo page first came back, if it did.
    pub answered: Option<f64>,
}

/// How long a boot may take before the benchmark gives up on it.
fn bound(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(120),
        Accel::Tcg => Duration::from_secs(300),
    }
}

/// How long to keep asking for the demo page once the image is up.
const ANSWER_GRACE: Duration = Duration::from_secs(30);

/// Boots `boot.disk` once and records it.
pub fn run(boot: &Boot<'_>) -> Result<Capture> {
    std::fs::create_dir_all(boot.work)?;
    let overlay = boot.work.join("boot.qcow2");
    let vars = boot.work.join("efivars.fd");
    let log = boot.work.join("console.log");
    if !boot.keep_disk || !overlay.exists() {
        let _ = std::fs::remove_file(&vars);
        crust_vm::overlay::create(boot.disk, &overlay)?;
    }
    let firmware = match boot.secure_boot {
        Some(store) => Firmware::secure_boot(&vars, store)?,
        None => Firmware::with_vars(&vars)?,
    };
    let mut config = Config::new(&overlay, boot.accel, firmware);
    config.no_reboot = true;
    let _tpm = match boot.tpm {
        Some(state) => {
            let tpm = crust_vm::tpm::Swtpm::for_qemu(state)?;
            config.tpm = tpm.socket.clone();
            Some(tpm)
        }
        None => None,
    };
    if let Some(guest) = boot.demo_port {
        let host = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        config.forwards.push((host, guest));
    }
    let mut vm = Vm::start(&config, Some(&log), false)?;
    let power_on = Instant::now()
        .checked_sub(vm.elapsed())
        .unwrap_or_else(Instant::now);
    let since = |at: Instant| at.saturating_duration_since(power_on).as_secs_f64();
    let deadline = power_on + bound(boot.accel);
    let mut capture = Capture::default();
    let mut poller: Option<Poller> = None;
    let mut health_checked = false;
    let mut up_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline {
            bail!(
                "the boot of {} did not finish within {:?}\n--- console tail ---\n{}",
                boot.disk.display(),
                bound(boot.accel),
                vm.console().tail(30)
            );
        }
        match vm.console().wait_for(
            "the end of the boot",
            Duration::from_millis(100).min(deadline - now),
            |_| true,
        ) {
            Ok(text) => {
                let at = since(Instant::now());
                if let Some(p) = phase::parse_line(&text) {
                    match p.phase {
                        Phase::Services => {
                            health_checked = p.detail.starts_with("started")
                                && !p.detail.contains("(0 with health checks)");
                            if let (Some((host, _)), None) = (config.forwards.first(), &poller) {
                                poller = Some(Poller::start(*host, power_on));
                            }
                        }
                        Phase::Ready if !health_checked => up_at = Some(Instant::now()),
                        Phase::Healthy => up_at = Some(Instant::now()),
                        _ => {}
                    }
                }
                capture.lines.push(TimedLine { at, text });
            }
            Err(WaitError::Timeout { .. }) => {}
            Err(WaitError::Closed { .. }) if boot.until == Until::Exit => break,
            Err(e) => {
                return Err(e).with_context(|| format!("booting {}", boot.disk.display()));
            }
        }
        if let Some(p) = poller.as_mut() {
            p.check();
            capture.answered = capture.answered.or(p.answered);
        }
        if boot.until == Until::Up
            && let Some(up) = up_at
        {
            let answered_or_none = poller.as_ref().is_none_or(|p| p.answered.is_some());
            if answered_or_none || up.elapsed() > ANSWER_GRACE {
                break;
            }
        }
    }
    if let Some(p) = poller {
        p.stop();
    }
    vm.kill();
    Ok(capture)
}

/// The demo page fetched over and over on its own thread until it answers.
struct Poller {
    stop: Arc<AtomicBool>,
    result: Receiver<f64>,
    answered: Option<f64>,
}

impl Poller {
    fn start(port: u16, power_on: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, result) = channel();
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if answers(port) {
                    let _ = tx.send(power_on.elapsed().as_secs_f64());
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            result,
            answered: None,
        }
    }

    fn check(&mut self) {
        if self.answered.is_none() {
            self.answered = self.result.try_recv().ok();
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// True when `GET /` on the host side of the forward gets a `200` response.
fn answers(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET / HTTP/1.0\r\nHost: crust\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(is_ok_status(&head))
    };
    attempt().unwrap_or(false)
}

/// True for the start of an HTTP `200` status line.
fn is_ok_status(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/1.") && head.get(8..12) == Some(b" 200")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_counts_as_an_answer() {
        assert!(is_ok_status(b"HTTP/1.0 200 OK"));
        assert!(is_ok_status(b"HTTP/1.1 200 "));
        assert!(!is_ok_status(b"HTTP/1.0 404 Not Found"));
        assert!(!is_ok_status(b"SSH-2.0-Open"));
        assert!(!is_ok_status(b""));
    }

    #[test]
    fn a_local_server_answers_the_poll() {
        let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in server.incoming().take(2) {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello");
            }
        });
        assert!(answers(port));
        let mut p = Poller::start(port, Instant::now());
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.answered.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            p.check();
        }
        assert!(p.answered.is_some());
        p.stop();
        // Nobody listening: no answer, no hang.
        let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(!answers(port));
    }
}
