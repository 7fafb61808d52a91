//! Fleets on etcd (CoreOS locksmith's design, with leases): reboot slots and host status.
//!
//! With user-data `[fleet]` a host takes one of its group's `max-rebooting` slots before it
//! reboots into an update, holds it across the reboot and the trial boot (the slot's key is
//! attached to a lease the new version keeps alive), and gives it back once the new version
//! is blessed or has rolled back. A host that dies holding a slot loses it when its lease
//! expires. Without etcd's answer a host does not reboot for an update: it waits, asks
//! again and says so. Each host also keeps its status (version, slot, update state) under
//! its machine id, attached to a short lease, so hosts that are gone disappear.
//!
//! ```text
//! /crust/fleet/<group>/slots/<n>             machine id of the host holding slot n
//!                                            (lease: [fleet] lease seconds)
//! /crust/fleet/<group>/hosts/<machine-id>    the host's status, JSON (lease: status TTL)
//! ```
//!
//! Every call runs on a worker thread of the update agent ([`crate::update`]), never on
//! PID 1's loop; [`etcd`] is the client.

pub mod etcd;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::json;

use etcd::{Client, EtcdError};

/// Where the configuration step leaves the fleet settings (`key=value` lines).
pub const RUN_FLEET: &str = "/run/crust/fleet";
/// The prefix of every key.
pub const PREFIX: &str = "/crust/fleet";

/// The fleet settings (user-data `[fleet]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// etcd members, `http://host:port`.
    pub endpoints: Vec<String>,
    /// The group whose hosts share the slots.
    pub group: String,
    /// Slots of the group.
    pub max_rebooting: u32,
    /// Seconds a slot's lease lives without renewal.
    pub lease: u64,
    /// Seconds a status's lease lives (it is renewed at every check).
    pub status_ttl: u64,
    /// A client certificate and key (PEM) for members that ask for one (mutual TLS).
    pub client_certificate: Option<(String, String)>,
}

impl Settings {
    /// The settings' text for [`RUN_FLEET`].
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for e in &self.endpoints {
            s.push_str(&format!("etcd={e}\n"));
        }
        s.push_str(&format!(
            "group={}\nmax-rebooting={}\nlease={}\nstatus-ttl={}\n",
            self.group, self.max_rebooting, self.lease, self.status_ttl
        ));
        if let Some((cert, key)) = &self.client_certificate {
            // PEM on one line each: newlines as `\n`.
            s.push_str(&format!(
                "client-certificate={}\nclient-key={}\n",
                cert.replace('\n', "\\n"),
                key.replace('\n', "\\n")
            ));
        }
        s
    }

    /// Reads [`RUN_FLEET`]; `None` without a fleet.
    pub fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string(RUN_FLEET).ok()?)
    }

    fn parse(text: &str) -> Option<Self> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
        };
        let endpoints: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("etcd="))
            .map(str::to_owned)
            .collect();
        (!endpoints.is_empty()).then_some(())?;
        Some(Self {
            endpoints,
            group: get("group")?.to_owned(),
            max_rebooting: get("max-rebooting")?.parse().ok()?,
            lease: get("lease")?.parse().ok()?,
            status_ttl: get("status-ttl")?.parse().ok()?,
            client_certificate: get("client-certificate")
                .zip(get("client-key"))
                .map(|(c, k)| (c.replace("\\n", "\n"), k.replace("\\n", "\n"))),
        })
    }
}

/// A slot held across a reboot, as recorded on `/var`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The slot's number.
    pub slot: u32,
    /// Its lease.
    pub lease: i64,
}

/// What asking for a slot gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This host holds the slot now.
    Taken(Held),
    /// Every slot is held, by these machine ids.
    Busy(Vec<String>),
}

/// A host's status, as kept in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The running version.
    pub version: String,
    /// The running slot (`a` or `b`).
    pub slot: String,
    /// The update state: `idle`, `eligible`, `downloading`, `installed`, `waiting`,
    /// `rebooting`, `trial`, `blessed`, `rolled-back`, `refused`, `error`.
    pub state: String,
    /// What it means in words.
    pub detail: String,
    /// Unix time of the last check of the channel (0: none yet this boot).
    pub last_check: u64,
}

/// The fleet client of one host.
#[derive(Debug, Clone)]
pub struct Fleet {
    client: Client,
    settings: Settings,
    machine_id: String,
    hostname: String,
    boot_time: u64,
    record: PathBuf,
    status_lease: Arc<Mutex<Option<i64>>>,
    /// Whether the last status report failed (the console hears of changes only).
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Fleet {
    /// The client for `settings`, recording held slots in `record_dir`.
    pub fn new(settings: Settings, record_dir: &Path) -> Result<Self, String> {
        // The proxies are for the outside world; the extra authorities apply.
        let http = crate::http::client::Client::new(
            crate::http::client::Settings {
                http_proxy: None,
                https_proxy: None,
                ..crate::http::client::Settings::read()
            },
            settings.client_certificate.clone(),
        );
        let client = Client::new(&settings.endpoints, http)?;
        let machine_id = std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let boot_time = crate::clock::now_unix()
            .saturating_sub(i64::try_from(crate::console::now().as_secs()).unwrap_or(0));
        Ok(Self {
            client,
            settings,
            machine_id,
            hostname,
            boot_time: u64::try_from(boot_time).unwrap_or(0),
            record: record_dir.join("fleet-slot"),
            status_lease: Arc::new(Mutex::new(None)),
            failing: Arc::default(),
        })
    }

    /// The group's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn slot_key(&self, n: u32) -> String {
        format!("{PREFIX}/{}/slots/{n}", self.settings.group)
    }

    /// The slot this host holds, from its record.
    pub fn held(&self) -> Option<Held> {
        let text = std::fs::read_to_string(&self.record).ok()?;
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
        };
        Some(Held {
            slot: get("slot")?.parse().ok()?,
            lease: get("lease")?.parse().ok()?,
        })
    }

    fn remember(&self, held: Option<Held>) -> std::io::Result<()> {
        match held {
            Some(h) => {
                let tmp = self.record.with_extension("tmp");
                std::fs::write(&tmp, format!("slot={}\nlease={}\n", h.slot, h.lease))?;
                std::fs::rename(&tmp, &self.record)?;
                std::fs::File::open(self.record.parent().unwrap_or(Path::new("/")))?.sync_all()
            }
            None => match std::fs::remove_file(&self.record) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Takes a free slot of the group with a new lease (the same slot again if this host
    /// holds one already), and records it before the reboot.
    pub fn acquire(&self) -> Result<Acquired, EtcdError> {
        if let Some(held) = self.held()
            && self.client.keepalive(held.lease)? > 0
        {
            return Ok(Acquired::Taken(held));
        }
        let lease = self.client.grant(self.settings.lease)?;
        let mut holders = Vec::new();
        for n in 0..self.settings.max_rebooting {
            match self
                .client
                .create(&self.slot_key(n), &self.machine_id, lease)?
            {
                Ok(()) => {
                    let held = Held { slot: n, lease };
                    if let Err(e) = self.remember(Some(held)) {
                        let _ = self.client.revoke(lease);
                        return Err(EtcdError::Refused(format!(
                            "cannot record the slot on /var: {e}"
                        )));
                    }
                    return Ok(Acquired::Taken(held));
                }
                Err(holder) if holder.value == self.machine_id => {
                    // Ours from before (a lost record): take it over with the new lease.
                    self.client
                        .put(&self.slot_key(n), &self.machine_id, lease)?;
                    let held = Held { slot: n, lease };
                    let _ = self.remember(Some(held));
                    return Ok(Acquired::Taken(held));
                }
                Err(holder) => holders.push(holder.value),
            }
        }
        let _ = self.client.revoke(lease);
        Ok(Acquired::Busy(holders))
    }

    /// Keeps the held slot's lease alive; `Ok(false)` when it had expired (the slot is
    /// gone: another host may reboot now).
    pub fn renew(&self) -> Result<bool, EtcdError> {
        let Some(held) = self.held() else {
            return Ok(false);
        };
        Ok(self.client.keepalive(held.lease)? > 0)
    }

    /// Gives the held slot back (its lease revoked, which deletes the key).
    pub fn release(&self) -> Result<Option<Held>, EtcdError> {
        let Some(held) = self.held() else {
            return Ok(None);
        };
        self.client.revoke(held.lease)?;
        let _ = self.remember(None);
        Ok(Some(held))
    }

    /// Whether reporting went from working to failing or back (the first report counts as
    /// working before it).
    pub fn report_changed(&self, failed: bool) -> bool {
        use std::sync::atomic::Ordering;
        self.failing.swap(failed, Ordering::Relaxed) != failed
    }

    /// Puts this host's status, attached to its status lease (renewed, or granted anew).
    pub fn report(&self, status: &Status) -> Result<(), EtcdError> {
        let mut lease_slot = self.status_lease.lock().unwrap_or_else(|e| e.into_inner());
        let alive = match *lease_slot {
            Some(l) => self.client.keepalive(l)? > 0,
            None => false,
        };
        let lease = if alive {
            lease_slot.unwrap_or(0)
        } else {
            let l = self.client.grant(self.settings.status_ttl)?;
            *lease_slot = Some(l);
            l
        };
        let value = json!({
            "machine-id": self.machine_id,
            "hostname": self.hostname,
            "group": self.settings.group,
            "version": status.version,
            "slot": status.slot,
            "state": status.state,
            "detail": status.detail,
            "last-check": status.last_check,
            "boot-time": self.boot_time,
            "updated": u64::try_from(crate::clock::now_unix()).unwrap_or(0),
            "reboot-slot": self.held().map(|h| h.slot),
        });
        self.client.put(
            &format!("{PREFIX}/{}/hosts/{}", self.settings.group, self.machine_id),
            &value.to_string(),
            lease,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_tests::etcd::Etcd;

    fn fleet(url: &str, id: &str, records: &Path) -> Fleet {
        let settings = Settings {
            endpoints: vec!["http://127.0.0.1:1".into(), url.into()],
            group: "g".into(),
            max_rebooting: 1,
            lease: 60,
            status_ttl: 60,
            client_certificate: None,
        };
        let mut f = Fleet::new(settings, records).unwrap();
        f.machine_id = id.into();
        f
    }

    #[test]
    fn slots_are_a_semaphore_with_leases_on_a_real_etcd() {
        let etcd = Etcd::start();
        let (ra, rb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // The first endpoint is dead: every call fails over to the second.
        let a = fleet(&etcd.url(), "aaaa", ra.path());
        let b = fleet(&etcd.url(), "bbbb", rb.path());
        let Acquired::Taken(held) = a.acquire().unwrap() else {
            panic!("the free slot was not taken")
        };
        assert_eq!(held.slot, 0);
        assert_eq!(b.acquire().unwrap(), Acquired::Busy(vec!["aaaa".into()]));
        // Asking again (say, after the reboot) keeps the same slot.
        assert_eq!(a.acquire().unwrap(), Acquired::Taken(held));
        assert!(a.renew().unwrap());
        a.report(&Status {
            version: "0.2.0".into(),
            slot: "b".into(),
            state: "trial".into(),
            detail: "on trial".into(),
            last_check: 1,
        })
        .unwrap();
        let hosts = a.client.range_prefix("/crust/fleet/g/hosts/", 10).unwrap();
        assert_eq!(hosts.len(), 1);
        assert!(
            hosts[0].value.contains("\"state\":\"trial\""),
            "{}",
            hosts[0].value
        );
        assert_eq!(a.release().unwrap(), Some(held));
        assert!(a.held().is_none());
        assert!(matches!(b.acquire().unwrap(), Acquired::Taken(_)));
        // A host that dies holding the slot loses it with its lease.
        let lease = b.held().unwrap().lease;
        b.client.revoke(lease).unwrap();
        assert!(!b.renew().unwrap());
        assert!(matches!(a.acquire().unwrap(), Acquired::Taken(_)));
    }

    #[test]
    fn settings_round_trip() {
        let s = Settings {
            endpoints: vec!["http://10.0.2.2:2379".into(), "http://10.0.2.3:2379".into()],
            group: "web".into(),
            max_rebooting: 2,
            lease: 900,
            status_ttl: 120,
            client_certificate: Some((
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
                "k\nk\n".into(),
            )),
        };
        assert_eq!(Settings::parse(&s.to_text()), Some(s));
        assert_eq!(Settings::parse("group=x\n"), None);
    }

    #[test]
    fn an_unreachable_cluster_is_an_error_naming_every_member() {
        let c = Client::new(
            &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            crate::http::client::Client::new(Default::default(), None),
        )
        .unwrap();
        let e = c.grant(10).unwrap_err().to_string();
        assert!(
            e.starts_with("etcd is unreachable") && e.contains(":1:") && e.contains(":2:"),
            "{e}"
        );
    }
}
