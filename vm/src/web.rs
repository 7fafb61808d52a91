//! A folder served over plain HTTP by Debian's nginx, for network boots: `cargo xtask qemu
//! --netboot` serves the netboot folder with it on this machine, and the UEFI HTTP boot
//! test serves it in a network namespace of its own.
//!
//! `.efi` files go out as `application/efi`, the type UEFI HTTP boot takes as an EFI
//! application (it would also go by the name's extension). nginx runs in the foreground without a master process (so as the user that starts it,
//! with every file of its own under a work folder), logs each request to
//! `access.log` there, and is stopped when the [`Web`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running nginx serving one folder.
#[derive(Debug)]
pub struct Web {
    child: Child,
    work: PathBuf,
}

impl Web {
    /// Serves `root` at `listen` (`ADDRESS:PORT`), nginx's files in `work`; in the network
    /// namespace `netns` when given (`ip netns exec`). Returns once the port answers.
    pub fn serve(root: &Path, listen: &str, work: &Path, netns: Option<&str>) -> Result<Self> {
        std::fs::create_dir_all(work)
            .with_context(|| format!("cannot create {}", work.display()))?;
        let conf = work.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process off; pid {w}/nginx.pid; error_log {w}/error.log;\n\
                 events {{}}\n\
                 http {{\n\
                   access_log {w}/access.log;\n\
                   client_body_temp_path {w}; proxy_temp_path {w}; fastcgi_temp_path {w};\n\
                   uwsgi_temp_path {w}; scgi_temp_path {w};\n\
                   types {{ application/efi efi; }} default_type application/octet-stream;\n\
                   server {{ listen {listen}; root {root}; autoindex on; }}\n\
                 }}\n",
                w = work.display(),
                root = root.display()
            ),
        )
        .with_context(|| format!("cannot write {}", conf.display()))?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", ns, "nginx"]);
                ip
            }
            None => Command::new("nginx"),
        };
        let child = cmd
            .arg("-p")
            .arg(work)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx (Debian's nginx package)")?;
        let mut web = Self {
            child,
            work: work.to_path_buf(),
        };
        web.wait_until_listening(listen, netns)?;
        Ok(web)
    }

    /// nginx's access log (one line per request, the combined format).
    pub fn access_log(&self) -> PathBuf {
        self.work.join("access.log")
    }

    fn wait_until_listening(&mut self, listen: &str, netns: Option<&str>) -> Result<()> {
        let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "80"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Asked from inside the namespace when there is one (bash's /dev/tcp).
            let probe = match netns {
                Some(ns) => Command::new("ip")
                    .args(["netns", "exec", ns, "bash", "-c"])
                    .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                None => std::net::TcpStream::connect(listen).is_ok(),
            };
            if probe {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.work.join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}) before listening on {listen}: {log}");
            }
            if Instant::now() >= deadline {
                bail!("nginx did not listen on {listen} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn nginx_serves_the_folder_with_efi_files_as_efi_applications() {
        // Debian's nginx, which `cargo xtask test` installs.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("netboot.efi"), b"MZ pretend").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let web = Web::serve(&root, &listen, &dir.path().join("work"), None).unwrap();
        let mut s = std::net::TcpStream::connect(&listen).unwrap();
        s.write_all(b"GET /netboot.efi HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("Content-Type: application/efi"), "{answer}");
        assert!(answer.ends_with("MZ pretend"), "{answer}");
        let log = std::fs::read_to_string(web.access_log()).unwrap();
        assert!(log.contains("GET /netboot.efi HTTP/1.0\" 200 10"), "{log}");
    }
}
