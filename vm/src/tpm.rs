//! A software TPM 2.0 (Debian's `swtpm`, libtpms inside) for machines and tests.
//!
//! A machine's TPM is a folder: swtpm keeps the TPM's persistent state there (its seeds,
//! so its storage key, and what was sealed under it), and every boot starts one swtpm
//! process on it that QEMU talks to over a control socket ([`Swtpm::for_qemu`]; QEMU's
//! `tpm-crb` device, which OVMF's TCG2 driver and the kernel's built-in `tpm_crb` find).
//! Another folder is another TPM, as another machine would have. The process ends when
//! QEMU closes the socket (`--terminate`) and is killed if it has not when the handle is
//! dropped.
//!
//! For tests of TPM code on this machine, [`Swtpm::server`] starts one that takes TPM
//! commands over TCP, already started up (`TPM2_Startup(CLEAR)` done), the way
//! `/dev/tpmrm0` takes them: the command and response bytes are the same.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running swtpm.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    /// The control socket QEMU connects to ([`Swtpm::for_qemu`]).
    pub socket: Option<PathBuf>,
    /// The TCP port taking TPM commands ([`Swtpm::server`]); its control port is the next.
    pub port: Option<u16>,
}

fn free_port_pair() -> Result<u16> {
    for _ in 0..50 {
        let a = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = a.local_addr()?.port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no two free TCP ports in a row on 127.0.0.1")
}

fn spawn(args: &[String], state: &Path) -> Result<Child> {
    std::fs::create_dir_all(state)
        .with_context(|| format!("cannot create the TPM state folder {}", state.display()))?;
    Command::new("swtpm")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run swtpm (install Debian's swtpm package)")
}

impl Swtpm {
    /// Starts swtpm on the state in `state` (made if missing: a new TPM) for one QEMU run;
    /// returns once its control socket is listening.
    pub fn for_qemu(state: &Path) -> Result<Self> {
        let state = std::path::absolute(state)?;
        let socket = state.join("swtpm.sock");
        let _ = std::fs::remove_file(&socket);
        let child = spawn(
            &[
                "socket".into(),
                "--tpm2".into(),
                "--tpmstate".into(),
                format!("dir={}", state.display()),
                "--ctrl".into(),
                format!("type=unixio,path={}", socket.display()),
                "--terminate".into(),
            ],
            &state,
        )?;
        let mut tpm = Self {
            child,
            socket: Some(socket.clone()),
            port: None,
        };
        tpm.wait_until(|| socket.exists())?;
        Ok(tpm)
    }

    /// Starts swtpm on the state in `state`, taking commands on a TCP port (and control
    /// commands on the next), powered on and started up.
    pub fn server(state: &Path) -> Result<Self> {
        let state = std::path::absolute(state)?;
        let port = free_port_pair()?;
        let child = spawn(
            &[
                "socket".into(),
                "--tpm2".into(),
                "--tpmstate".into(),
                format!("dir={}", state.display()),
                "--server".into(),
                format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                "--ctrl".into(),
                format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
                "--flags".into(),
                "not-need-init,startup-clear".into(),
            ],
            &state,
        )?;
        let mut tpm = Self {
            child,
            socket: None,
            port: Some(port),
        };
        tpm.wait_until(|| std::net::TcpStream::connect(("127.0.0.1", port + 1)).is_ok())?;
        Ok(tpm)
    }

    /// What tpm2-tools' `TPM2TOOLS_TCTI` names this TPM as ([`Swtpm::server`] only).
    pub fn tcti(&self) -> Option<String> {
        self.port.map(|p| format!("swtpm:host=127.0.0.1,port={p}"))
    }

    fn wait_until(&mut self, ready: impl Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready() {
            if let Some(status) = self.child.try_wait()? {
                bail!("swtpm exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("swtpm did not start listening within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// QEMU's arguments for a TPM 2.0 CRB device backed by this swtpm.
    pub fn qemu_args(socket: &Path) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!(
                "socket,id=chrtpm,path={}",
                socket.display().to_string().replace(',', ",,")
            ),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-crb,tpmdev=tpm0".into(),
        ]
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // QEMU's exit usually ended it already (`--terminate`).
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            if self.socket.is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
