//! Update repositories hosted the way real ones are, with Debian's nginx and squid:
//!
//! 1. a name-based virtual host (`updates.test`, named in user-data `network.hosts`) whose
//!    default server answers 404 to anything else: the host finds, installs and blesses
//!    0.2.0, sending the repository's name (and port) as `Host`;
//! 2. the same repository over HTTPS only, with a certificate from a test CA the user-data
//!    names, behind a redirect (`/old/…` → `/…`), and reachable only through a proxy: nginx
//!    listens on 127.0.0.2, which the guest cannot reach (QEMU's user network maps 10.0.2.2
//!    to 127.0.0.1 alone), squid listens on 127.0.0.1 and resolves `updates.test` to
//!    127.0.0.2. The host installs and blesses 0.3.0 through a `CONNECT` tunnel.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crust_builder::build::outputs;
use crust_builder::sign::SigningKey;
use crust_format::phase::Phase;
use crust_tests::repo::{self, now, release_to};
use crust_tests::{BootOptions, Disk, TestVm, boot_timeout, built_image, run_ok};

/// A server process stopped on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(addr: &str, what: &str) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on {addr}");
}

/// A test CA and a certificate for `updates.test` signed by it: (ca.crt, server.crt,
/// server.key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_key, ca) = (dir.join("ca.key"), dir.join("ca.crt"));
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=Crust test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
    );
    let (key, csr, cert) = (
        dir.join("server.key"),
        dir.join("server.csr"),
        dir.join("server.crt"),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-subj", "/CN=updates.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:updates.test\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .args(["-CAcreateserial", "-extfile"])
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
    );
    (ca, cert, key)
}

/// nginx with a 404 default server and the `updates.test` virtual host serving `repo`, in
/// plain HTTP on 127.0.0.1:`http` and over TLS on 127.0.0.2:`https`.
fn nginx(dir: &Path, repo: &Path, http: u16, https: u16, cert: &Path, key: &Path) -> Daemon {
    let conf = dir.join("nginx.conf");
    let tls = format!(
        "ssl_certificate {}; ssl_certificate_key {};",
        cert.display(),
        key.display()
    );
    let vhost = format!(
        "server_name updates.test; root {}; location /old/ {{ rewrite ^/old/(.*)$ /$1 permanent; }}",
        repo.display()
    );
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{}}\n\
             http {{\n\
               access_log {d}/access.log;\n\
               client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
               uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen 127.0.0.1:{http} default_server; return 404; }}\n\
               server {{ listen 127.0.0.1:{http}; {vhost} }}\n\
               server {{ listen 127.0.0.2:{https} ssl default_server; {tls} return 404; }}\n\
               server {{ listen 127.0.0.2:{https} ssl; {tls} {vhost} }}\n\
             }}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (cargo xtask test installs it)");
    let daemon = Daemon(child);
    wait_for_port(&format!("127.0.0.1:{http}"), "nginx");
    wait_for_port(&format!("127.0.0.2:{https}"), "nginx");
    daemon
}

/// squid on 127.0.0.1:`port`, resolving `updates.test` to 127.0.0.2 from a hosts file of
/// its own, tunnelling to `https`.
fn squid(dir: &Path, port: u16, https: u16) -> Daemon {
    // Squid drops to its own user: its files must be writable by it.
    run_ok(Command::new("chmod").arg("0777").arg(dir));
    std::fs::write(dir.join("hosts"), "127.0.0.2 updates.test\n").unwrap();
    let conf = dir.join("squid.conf");
    std::fs::write(
        &conf,
        format!(
            "http_port 127.0.0.1:{port}\n\
             acl tunnel_port port {https}\n\
             acl CONNECT method CONNECT\n\
             acl local src 127.0.0.0/8\n\
             http_access deny CONNECT !tunnel_port\n\
             http_access allow local\n\
             http_access deny all\n\
             hosts_file {d}/hosts\n\
             pid_filename {d}/squid.pid\n\
             cache_log {d}/cache.log\n\
             access_log {d}/access.log\n\
             coredump_dir {d}\n\
             cache deny all\n\
             shutdown_lifetime 1 seconds\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("squid")
        .args(["-N", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("squid (cargo xtask test installs it)");
    let daemon = Daemon(child);
    wait_for_port(&format!("127.0.0.1:{port}"), "squid");
    daemon
}

fn wait(t: &mut TestVm, text: &str, secs: u64) -> String {
    t.vm.wait_for_text(text, Duration::from_secs(secs))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ready(t: &mut TestVm, version: &str) {
    let line =
        t.vm.wait_for_phase(Phase::Ready, boot_timeout(t.accel))
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.detail.contains(&format!("crust {version},")),
        "{}",
        line.detail
    );
}

#[test]
#[ignore = "builds two versions, runs nginx and squid, and boots QEMU; run through `cargo xtask test`"]
fn updates_through_a_virtual_host_https_a_redirect_and_a_proxy() {
    let img = built_image();
    let work = tempfile::tempdir().unwrap();
    let keys = img.dir.parent().unwrap().join("keys");
    let key = SigningKey::development(&keys).unwrap();
    let v2 = repo::variant(work.path(), &keys, "0.2.0", "", &[]).join(outputs::BUNDLE);
    let v3 = repo::variant(work.path(), &keys, "0.3.0", "", &[]).join(outputs::BUNDLE);
    let servers = work.path().join("servers");
    std::fs::create_dir_all(&servers).unwrap();
    let (ca, cert, server_key) = certificates(&servers);
    let repository = work.path().join("repo");
    std::fs::create_dir_all(&repository).unwrap();
    let (http, https, proxy) = (repo::free_port(), repo::free_port(), repo::free_port());
    let _nginx = nginx(&servers, &repository, http, https, &cert, &server_key);
    let squid_dir = work.path().join("squid");
    std::fs::create_dir_all(&squid_dir).unwrap();
    let _squid = squid(&squid_dir, proxy, https);

    // 1. A name-based virtual host, plain HTTP, reached directly.
    release_to(&repository, "stable", &v2, &key, 86_400, now());
    let seed = work.path().join("seed.img");
    let vhost = format!(
        "version = 1\n[network.hosts]\n\"updates.test\" = \"10.0.2.2\"\n[update]\n\
         repository = \"http://updates.test:{http}\"\ninterval = 10\nhealth-timeout = 120\n"
    );
    crust_vm::seed::write(vhost.as_bytes(), &seed).unwrap();
    let mut disk = Disk::new(&img);
    let opts = BootOptions {
        no_reboot: false,
        ..BootOptions::default()
    };
    let mut t = disk.boot_with(opts, |c| c.extra_drives.push(seed.clone()));
    ready(&mut t, "0.1.0");
    wait(&mut t, "update: 0.2.0 installed in slot b", 240);
    ready(&mut t, "0.2.0");
    wait(&mut t, "update: 0.2.0 in slot b is healthy: blessed", 180);
    t.power_off();
    drop(t);
    let log = std::fs::read_to_string(servers.join("access.log")).unwrap();
    assert!(
        log.contains("GET /channels/stable.index HTTP/1.1\" 200"),
        "{log}"
    );

    // 2. HTTPS with the test CA, a redirect, and only through the proxy.
    release_to(&repository, "stable", &v3, &key, 86_400, now());
    let pem = std::fs::read_to_string(&ca).unwrap();
    let tunnelled = format!(
        "version = 1\n[network]\nca-certificates = ['''\n{pem}''']\n[network.proxy]\n\
         https = \"http://10.0.2.2:{proxy}\"\n[update]\n\
         repository = \"https://updates.test:{https}/old\"\ninterval = 10\nhealth-timeout = 120\n"
    );
    crust_vm::seed::write(tunnelled.as_bytes(), &seed).unwrap();
    let mut t = disk.boot_with(opts, |c| c.extra_drives.push(seed.clone()));
    ready(&mut t, "0.2.0");
    wait(&mut t, "update: 0.3.0 installed in slot a", 240);
    ready(&mut t, "0.3.0");
    wait(&mut t, "update: 0.3.0 in slot a is healthy: blessed", 180);
    t.power_off();
    let proxied = std::fs::read_to_string(squid_dir.join("access.log")).unwrap();
    assert!(
        proxied.contains(&format!("CONNECT updates.test:{https}")),
        "squid saw no tunnel:\n{proxied}"
    );
    let log = std::fs::read_to_string(servers.join("access.log")).unwrap();
    assert!(
        log.contains("GET /old/channels/stable.index HTTP/1.1\" 301"),
        "no redirect:\n{log}"
    );
}
