//! What observability costs at run time: one boot of the image with `[metrics]` on (plain
//! HTTP, through a port forward), then scrapes from this machine. The exporter's own
//! `process_cpu_seconds_total` before and after the scrapes gives its CPU time per scrape,
//! its `process_resident_memory_bytes` its resident memory, and the host's clock the time
//! a scrape takes end to end. (What it costs in the image is the size split's
//! "observability agent" line.)

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crust_vm::console::WaitError;
use crust_vm::firmware::Firmware;
use crust_vm::{Accel, Config, Vm};

use super::report::ObserveCost;
use super::stats::median;

/// The user-data of the measured boot.
const USER_DATA: &str = "version = 1\n\n[metrics]\nport = 9100\n";
/// How long the boot may take to serve metrics.
const BOUND: Duration = Duration::from_secs(300);

/// One scrape: the body, and how long it took.
fn scrape(port: u16) -> Result<(String, f64)> {
    let started = Instant::now();
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: crust\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let took = started.elapsed().as_secs_f64();
    if !text.starts_with("HTTP/1.1 200 ") {
        bail!("the exporter answered {:?}", text.lines().next());
    }
    Ok((text, took))
}

/// A sample's value in an exposition.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Boots `image` with `[metrics]` on and scrapes it `scrapes` times.
pub fn measure(image: &Path, work: &Path, accel: Accel, scrapes: usize) -> Result<ObserveCost> {
    std::fs::create_dir_all(work)?;
    let overlay = work.join("observe.qcow2");
    let vars = work.join("efivars.fd");
    let seed = work.join("seed.img");
    let _ = std::fs::remove_file(&vars);
    crust_vm::overlay::create(image, &overlay)?;
    crust_vm::seed::write(USER_DATA.as_bytes(), &seed)?;
    let mut config = Config::new(&overlay, accel, Firmware::with_vars(&vars)?);
    config.no_reboot = true;
    config.extra_drives.push(seed);
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    config.forwards.push((port, 9100));
    let mut vm = Vm::start(&config, Some(&work.join("console.log")), false)?;
    let outcome = (|| -> Result<ObserveCost> {
        match vm
            .console()
            .wait_for("the exporter", BOUND, |l| l.contains("] metrics: serving "))
        {
            Ok(_) => {}
            Err(e @ WaitError::Timeout { .. }) => bail!(e),
            Err(e) => bail!(e),
        }
        // The first scrape warms up (page faults, the first thread).
        let (first, _) = scrape(port).context("the first scrape")?;
        let cpu_before = sample(&first, "process_cpu_seconds_total").context("no CPU time")?;
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..scrapes {
            let (text, took) = scrape(port)?;
            bytes = text.len();
            times.push(took);
        }
        let (last, _) = scrape(port)?;
        let cpu_after = sample(&last, "process_cpu_seconds_total").context("no CPU time")?;
        let rss = sample(&last, "process_resident_memory_bytes").context("no resident size")?;
        Ok(ObserveCost {
            scrapes,
            cpu_per_scrape_ms: (cpu_after - cpu_before) * 1000.0 / scrapes as f64,
            scrape_ms: median(&times).unwrap_or(0.0) * 1000.0,
            exporter_resident_bytes: rss as u64,
            scrape_bytes: bytes as u64,
            accelerator: accel.as_str().into(),
        })
    })();
    vm.kill();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_by_name() {
        let text = "# HELP x y\nprocess_cpu_seconds_total 0.25\nprocess_cpu_seconds_total_x 9\n";
        assert_eq!(sample(text, "process_cpu_seconds_total"), Some(0.25));
        assert_eq!(sample(text, "nothing"), None);
    }
}
