//! The agent on this machine (no QEMU) against real peers over TLS: the shipper sends to
//! Debian's rsyslog with its GnuTLS driver, which asks for a client certificate, and is
//! refused by a collector whose certificate its CA did not sign; the exporter serves
//! `curl` over mutual TLS behind a bearer token, and refuses a client without a
//! certificate or without the token.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crust_format::observe::{
    Facility, LogsSettings, MetricsSettings, Protocol, Record, ServerTls, Severity,
};
use crust_tests::observe::{Certs, Rsyslog, RsyslogTls, free_port, wait_listening};

const AGENT: &str = env!("CARGO_BIN_EXE_crust-observe");

fn record(i: u32) -> String {
    Record {
        monotonic_us: 1_000_000 + u64::from(i),
        facility: Facility::User,
        severity: Severity::Info,
        app: "tls-test".into(),
        msgid: "-".into(),
        msg: format!("line {i} over TLS"),
    }
    .to_line()
}

fn logs_settings(
    dir: &Path,
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> std::path::PathBuf {
    let settings = LogsSettings {
        host: "127.0.0.1".into(),
        port,
        protocol: Protocol::Tls,
        ca: Some(ca.display().to_string()),
        server_name: Some("collector.test".into()),
        client: client.map(|(c, k)| (c.display().to_string(), k.display().to_string())),
        buffer: 1 << 20,
        kernel: false,
    };
    let path = dir.join(format!("logs-{port}-{}", client.is_some()));
    std::fs::write(&path, settings.to_text()).unwrap();
    path
}

#[test]
fn the_shipper_sends_to_rsyslog_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("ca"));
    let (server, server_key) = certs.issue("collector", &["collector.test"], &["127.0.0.1"], false);
    let (client, client_key) = certs.issue("host", &["host.test"], &[], true);
    let rsyslog = Rsyslog::new(
        &dir.path().join("rsyslog"),
        Some(&RsyslogTls {
            ca: certs.ca(),
            certificate: server,
            key: server_key,
            client_certificates: true,
        }),
        true,
    );
    let settings = logs_settings(
        dir.path(),
        rsyslog.port,
        &certs.ca(),
        Some((&client, &client_key)),
    );
    let mut shipper = Command::new(AGENT)
        .arg("shipper")
        .arg(&settings)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = shipper.stdin.take().unwrap();
    for i in 1..=20 {
        stdin.write_all(record(i).as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    rsyslog.wait_for("line 20", Duration::from_secs(30), |l| {
        l.msg == "line 20 over TLS"
    });
    let got: Vec<String> = rsyslog
        .received()
        .into_iter()
        .filter(|l| l.app == "tls-test")
        .map(|l| l.msg)
        .collect();
    let want: Vec<String> = (1..=20).map(|i| format!("line {i} over TLS")).collect();
    assert_eq!(got, want, "every line, once, in order");
    drop(stdin);
    let _ = Command::new("kill")
        .args(["-TERM", &shipper.id().to_string()])
        .status();
    let out = shipper.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("connected to the collector tls://127.0.0.1:"),
        "{said}"
    );
}

#[test]
fn the_shipper_refuses_a_collector_its_ca_did_not_sign() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("ca"));
    let other = Certs::new(&dir.path().join("other"));
    let (server, server_key) = other.issue("collector", &["collector.test"], &["127.0.0.1"], false);
    let _rsyslog = Rsyslog::new(
        &dir.path().join("rsyslog"),
        Some(&RsyslogTls {
            ca: other.ca(),
            certificate: server,
            key: server_key,
            client_certificates: false,
        }),
        true,
    );
    let settings = logs_settings(dir.path(), _rsyslog.port, &certs.ca(), None);
    let mut shipper = Command::new(AGENT)
        .arg("shipper")
        .arg(&settings)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _ = Command::new("kill")
        .args(["-TERM", &shipper.id().to_string()])
        .status();
    drop(shipper.stdin.take());
    let out = shipper.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("cannot reach the collector tls://127.0.0.1:"),
        "{said}"
    );
    assert!(
        said.contains("certificate"),
        "the reason names the certificate: {said}"
    );
    assert!(!said.contains("connected to"), "{said}");
}

fn curl(port: u16, args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
        .args(args)
        .arg(format!("https://metrics.test:{port}/metrics"))
        .arg("--resolve")
        .arg(format!("metrics.test:{port}:127.0.0.1"))
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_exporter_serves_mutual_tls_behind_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("ca"));
    let (server, server_key) = certs.issue("metrics", &["metrics.test"], &[], false);
    let (client, client_key) = certs.issue("prometheus", &["prometheus.test"], &[], true);
    let port = free_port();
    let token = "s3cret-token-for-the-test";
    let settings = MetricsSettings {
        address: "127.0.0.1".parse().unwrap(),
        port,
        tls: Some(ServerTls {
            certificate: server.display().to_string(),
            key: server_key.display().to_string(),
            client_ca: Some(certs.ca().display().to_string()),
        }),
        bearer_token: Some(token.into()),
    };
    let path = dir.path().join("metrics");
    std::fs::write(&path, settings.to_text()).unwrap();
    let mut exporter = Command::new(AGENT)
        .arg("exporter")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_listening(port, Duration::from_secs(10)));
    let ca = certs.ca().display().to_string();
    let (cert, key) = (
        client.display().to_string(),
        client_key.display().to_string(),
    );
    let auth = format!("Authorization: Bearer {token}");
    let started = Instant::now();
    let (code, body) = curl(
        port,
        &["--cacert", &ca, "--cert", &cert, "--key", &key, "-H", &auth],
    );
    assert_eq!(code, 0, "{body}");
    assert!(body.ends_with("\n200"), "{body}");
    assert!(body.contains("\nnode_load1 "), "{body}");
    eprintln!("a scrape over mutual TLS took {:?}", started.elapsed());
    let (_, body) = curl(port, &["--cacert", &ca, "--cert", &cert, "--key", &key]);
    assert!(body.ends_with("\n401"), "no token: {body}");
    let (_, body) = curl(
        port,
        &[
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-H",
            "Authorization: Bearer wrong-token-0123456",
        ],
    );
    assert!(body.ends_with("\n401"), "a wrong token: {body}");
    let (code, body) = curl(port, &["--cacert", &ca, "-H", &auth]);
    assert!(
        code != 0 && !body.contains("node_load1"),
        "no client certificate: {code} {body}"
    );
    let _ = exporter.kill();
    let out = exporter.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("serving https://127.0.0.1:")
            && said.contains("to clients with a bearer token and a client certificate"),
        "{said}"
    );
}
