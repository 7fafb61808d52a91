//! A fleet end to end: three hosts booted from one image, one real etcd (Debian's) on this
//! machine, `max-rebooting = 1`, an update repository served over HTTP.
//!
//! 1. etcd is down when 0.2.0 is published (rollout 0): every host downloads and installs
//!    it, but none reboots without etcd's answer, and each says so. etcd comes back: the
//!    three reboot one after another, and at no moment are two of them between their update
//!    reboot and their blessing — checked on the consoles (the test's clock) and in etcd
//!    (the hosts' reported states). `cargo xtask fleet status` shows the fleet during and
//!    after.
//! 2. 0.3.0 is published with `--rollout 10m`. The hosts' machine ids were chosen so that
//!    host a's turn comes about half a minute into the rollout and host b's about two
//!    minutes in: host a installs only after its computed time; the release is paused before
//!    host b's turn, and host b never starts it; pulled, it leaves host a on 0.3.0.
//!
//! The three machines run at once (this test is alone in its binary).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crust_builder::build::outputs;
use crust_builder::repo::{StateChange, change_state};
use crust_builder::sign::SigningKey;
use crust_format::repo::{ReleaseState, Rollout};
use crust_tests::etcd::Etcd;
use crust_tests::repo::{self, Server, now, release_rolling};
use crust_tests::{BootOptions, Disk, TestVm, built_image, copy_image, write_state_file};
use crust_vm::console::WaitError;

/// The rollout of step 2.
const ROLLOUT: u64 = 600;

/// A machine id whose place in the rollout of `version` lies within `range` (fractions of
/// the rollout, in thousandths): found by trying ids in a fixed order.
fn machine_id_in(version: &str, range: std::ops::Range<u64>) -> String {
    (0u64..)
        .map(|n| crust_format::Digest::of(&n.to_le_bytes()).short(32))
        .find(|id| {
            let place = Rollout {
                start: 0,
                duration: 1000,
            }
            .eligible_at(id.as_bytes(), version);
            range.contains(&place)
        })
        .expect("an id")
}

/// A host of the fleet: its machine, and when (on the test's clock) each console line came.
struct Host {
    name: &'static str,
    machine_id: String,
    vm: TestVm,
    lines: Vec<(Instant, String)>,
}

impl Host {
    /// Reads what the console printed meanwhile (a fatal line fails the test).
    fn pump(&mut self) {
        match self
            .vm
            .vm
            .console()
            .wait_for("", Duration::from_millis(30), |_| false)
        {
            Err(WaitError::Timeout { .. }) => {}
            Err(e) => panic!("host {}: {e}", self.name),
            Ok(_) => unreachable!("nothing is wanted"),
        }
        let history = self.vm.vm.console().history();
        let now = Instant::now();
        for line in &history[self.lines.len()..] {
            self.lines.push((now, line.clone()));
        }
    }

    /// When a line containing `text` came, if it did.
    fn seen(&self, text: &str) -> Option<Instant> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(text))
            .map(|(at, _)| *at)
    }

    fn count(&self, text: &str) -> usize {
        self.lines.iter().filter(|(_, l)| l.contains(text)).count()
    }
}

/// Pumps every host (and polls etcd through `each`) until `done` holds, within `limit`.
fn until(
    hosts: &mut [Host],
    limit: Duration,
    what: &str,
    mut each: impl FnMut(&[Host]),
    done: impl Fn(&[Host]) -> bool,
) {
    let end = Instant::now() + limit;
    loop {
        for h in hosts.iter_mut() {
            h.pump();
        }
        each(hosts);
        if done(hosts) {
            return;
        }
        assert!(Instant::now() < end, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cargo xtask fleet status` as an operator runs it.
fn fleet_status(etcd: &Etcd) -> String {
    let out = crust_tests::run_ok(
        Command::new(env!("CARGO"))
            .args([
                "run", "--quiet", "-p", "xtask", "--", "fleet", "status", "--etcd",
            ])
            .arg(etcd.url())
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The states the hosts report in etcd, by machine id.
fn states(etcd: &Etcd) -> BTreeMap<String, String> {
    etcd.get_prefix("/crust/fleet/e2e/hosts/")
        .into_iter()
        .filter_map(|(_, v)| {
            let doc: serde_json::Value = serde_json::from_str(&v).ok()?;
            Some((
                doc["machine-id"].as_str()?.to_owned(),
                doc["state"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[test]
#[ignore = "boots three machines at once in QEMU with a real etcd; run through `cargo xtask test`"]
fn three_hosts_reboot_one_at_a_time_follow_rollouts_and_stop_when_paused() {
    let img = built_image();
    let work = tempfile::tempdir().unwrap();
    let keys = img.dir.parent().unwrap().join("keys");
    let key = SigningKey::development(&keys).unwrap();
    let v2 = repo::variant(work.path(), &keys, "0.2.0", "", &[]).join(outputs::BUNDLE);
    let v3 = repo::variant(work.path(), &keys, "0.3.0", "", &[]).join(outputs::BUNDLE);

    let mut etcd = Etcd::start();
    let repository = work.path().join("repo");
    let port = repo::free_port();
    let _server = Server::start(&repository, port);
    let tables = format!(
        "[update]\nrepository = \"http://10.0.2.2:{port}\"\ninterval = 10\n\
         health-timeout = 240\n[fleet]\netcd = [\"http://10.0.2.2:{}\"]\ngroup = \"e2e\"\n\
         max-rebooting = 1\nlease = 600\n",
        etcd.port
    );
    // Host a comes 3-6 % into 0.3.0's rollout, host b 20-23 %, host c after 80 %.
    let ids = [
        ("a", machine_id_in("0.3.0", 30..60)),
        ("b", machine_id_in("0.3.0", 200..230)),
        ("c", machine_id_in("0.3.0", 800..1000)),
    ];
    let mut disks = Vec::new();
    let mut hosts = Vec::new();
    for (name, id) in &ids {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let raw = copy_image(&img, &dir);
        write_state_file(
            &raw,
            "/lib/crust/machine-id",
            format!("{id}\n").as_bytes(),
            0o644,
        );
        let seed = dir.join("seed.img");
        let user_data = format!("version = 1\nhostname = \"fleet-{name}\"\n{tables}");
        crust_vm::seed::write(user_data.as_bytes(), &seed).unwrap();
        disks.push((Disk::over(&raw, &img.dir), seed, raw));
    }
    for ((disk, seed, _), (name, id)) in disks.iter_mut().zip(&ids) {
        let seed = seed.clone();
        let opts = BootOptions {
            no_reboot: false,
            ..BootOptions::default()
        };
        let vm = disk.boot_alongside(opts, move |c| c.extra_drives.push(seed));
        hosts.push(Host {
            name,
            machine_id: id.clone(),
            vm,
            lines: Vec::new(),
        });
    }
    let long = Duration::from_secs(600);
    until(
        &mut hosts,
        long,
        "three hosts up and reporting",
        |_| {},
        |hs| {
            hs.iter()
                .all(|h| h.seen("crust: ready: crust 0.1.0").is_some())
        },
    );
    until(
        &mut hosts,
        long,
        "statuses in etcd",
        |_| {},
        |_| states(&etcd).len() == 3,
    );

    // 1. etcd goes down; 0.2.0 is published; nobody reboots without etcd's answer.
    etcd.stop();
    release_rolling(&repository, "stable", &v2, &key, 86_400, now(), 0);
    until(
        &mut hosts,
        long,
        "every host waiting for etcd",
        |_| {},
        |hs| {
            hs.iter().all(|h| {
                h.seen("update: 0.2.0 installed in slot b").is_some()
                    && h.seen("etcd is unreachable").is_some()
                    && h.seen("not rebooting for the update").is_some()
            })
        },
    );
    for h in &hosts {
        assert!(
            h.seen("rebooting into the new version").is_none(),
            "host {} rebooted",
            h.name
        );
    }
    etcd.resume();
    let resumed = Instant::now();
    let mut most_on_trial = 0;
    let mut mid_update_status = String::new();
    until(
        &mut hosts,
        Duration::from_secs(1200),
        "all three blessed on 0.2.0",
        |_| {
            let s = states(&etcd);
            let busy = s
                .values()
                .filter(|st| *st == "rebooting" || *st == "trial")
                .count();
            most_on_trial = most_on_trial.max(busy);
            if busy > 0 && mid_update_status.is_empty() {
                mid_update_status = fleet_status(&etcd);
            }
        },
        |hs| {
            hs.iter().all(|h| {
                h.seen("update: 0.2.0 in slot b is healthy: blessed")
                    .is_some()
            })
        },
    );
    assert!(
        most_on_trial <= 1,
        "etcd showed {most_on_trial} hosts mid-reboot at once"
    );
    // On the test's clock: each host's interval from its slot to its blessing.
    let mut spans: Vec<(Instant, Instant, &str)> = hosts
        .iter()
        .map(|h| {
            (
                h.seen("update: took reboot slot")
                    .expect("a slot was taken"),
                h.seen("update: 0.2.0 in slot b is healthy: blessed")
                    .unwrap(),
                h.name,
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "host {} took a slot before host {} was blessed",
            pair[1].2,
            pair[0].2
        );
    }
    let longest_wait = hosts
        .iter()
        .map(|h| {
            let ready = h.seen("update: 0.2.0 installed in slot b").unwrap();
            h.seen("update: took reboot slot").unwrap() - ready
        })
        .max()
        .unwrap();
    eprintln!(
        "=== etcd back to all three blessed: {:?}; longest wait for a slot after the install: \
         {longest_wait:?}",
        spans.last().unwrap().1 - resumed
    );
    assert!(
        mid_update_status.contains("mid-update"),
        "fleet status during the update:\n{mid_update_status}"
    );
    eprintln!("=== fleet status during the update:\n{mid_update_status}");

    // 2. 0.3.0 rolls out over 10 minutes.
    let issued = release_rolling(&repository, "stable", &v3, &key, 86_400, now(), ROLLOUT);
    let rollout = Rollout {
        start: issued,
        duration: ROLLOUT,
    };
    let turn = |id: &str| rollout.eligible_at(id.as_bytes(), "0.3.0");
    let (a, b) = (turn(&hosts[0].machine_id), turn(&hosts[1].machine_id));
    until(
        &mut hosts,
        long,
        "host a's 0.3.0",
        |_| {},
        |hs| hs[0].seen("update: found 0.3.0").is_some(),
    );
    assert!(
        now() >= a,
        "host a started 0.3.0 before its turn ({} s early)",
        a - now()
    );
    assert!(
        hosts[0]
            .seen("0.3.0 is rolling out on channel stable: this host's turn comes at")
            .is_some()
    );
    // Paused before host b's turn: host b never starts it.
    change_state(
        &StateChange {
            repo: &repository,
            channel: "stable",
            version: "0.3.0",
            state: ReleaseState::Paused,
            valid_for: 86_400,
            now: now(),
        },
        &key,
    )
    .unwrap();
    assert!(now() + 20 < b, "host b's turn came before the pause");
    until(
        &mut hosts,
        long,
        "host a blessed on 0.3.0",
        |_| {},
        |hs| {
            hs[0]
                .seen("update: 0.3.0 in slot a is healthy: blessed")
                .is_some()
        },
    );
    until(
        &mut hosts,
        Duration::from_secs(b.saturating_sub(now()) + 60),
        "host b past its turn",
        |_| {},
        |hs| now() > b + 20 && hs[1].seen("0.3.0 is paused on this channel").is_some(),
    );
    assert_eq!(
        hosts[1].count("update: found 0.3.0"),
        0,
        "host b started a paused release"
    );
    // Pulled: host a stays on 0.3.0, the others never take it.
    change_state(
        &StateChange {
            repo: &repository,
            channel: "stable",
            version: "0.3.0",
            state: ReleaseState::Pulled,
            valid_for: 86_400,
            now: now(),
        },
        &key,
    )
    .unwrap();
    until(
        &mut hosts,
        long,
        "the pull seen",
        |_| {},
        |hs| hs[1].seen("0.3.0 was pulled from this channel").is_some(),
    );
    let after = fleet_status(&etcd);
    eprintln!("=== fleet status after:\n{after}");
    assert!(
        after.starts_with("3 hosts: 2 on 0.2.0; 1 on 0.3.0;"),
        "{after}"
    );
    for h in &hosts[1..] {
        assert_eq!(
            h.count("update: found 0.3.0"),
            0,
            "host {} took 0.3.0",
            h.name
        );
    }
    for mut h in hosts {
        h.vm.power_off();
    }
    drop(disks);
}
