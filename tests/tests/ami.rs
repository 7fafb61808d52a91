//! `crust-ami` against moto, the AWS API emulator (a real `moto_server` on this machine's
//! loopback): the snapshot's blocks, read back with boto3 through the EBS direct APIs,
//! equal the image's, blocks of zeros are not sent, and the RegisterImage request (which
//! moto accepts and ignores) carries the parameters a Crust disk needs, as moto's request
//! recorder saw them on the wire, among them the UEFI variable store with a Secure Boot key
//! set (`UefiData`, made by AWS's `uefivars` and read back by Red Hat's `virt-fw-vars`).
//!
//! moto gives snapshots 512-byte blocks (EBS: 512 KiB), one request each, so the image is
//! a made-up 4 MiB disk rather than the built one. `cargo xtask test` builds the publisher
//! and installs moto (`CRUST_TEST_AMI`, `CRUST_TEST_MOTO_PYTHON`) and the UEFI store tools
//! (`CRUST_TEST_UEFIVARS`, `CRUST_TEST_VIRT_FW_VARS`); `--no-ami` skips this.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crust_builder::secureboot::{self, KeySet, Role};
use crust_tests::run_ok;

const MIB: u64 = 1 << 20;

fn env_path(var: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the AMI test through `cargo xtask test` (without --no-ami)")
    })
}

/// A moto server, stopped when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start(python: &Path, recording: &Path, log: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .env("MOTO_ENABLE_RECORDING", "true")
            .env("MOTO_RECORDER_FILEPATH", recording)
            .stdout(Stdio::from(std::fs::File::create(log).expect("log")))
            .stderr(Stdio::from(
                std::fs::File::create(log.with_extension("err")).expect("log"),
            ))
            .spawn()
            .expect("start moto_server");
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto did not listen on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 4 MiB disk: random data in places, a stretch of written zeros, holes elsewhere.
fn tiny_image(path: &Path) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let mut f = std::fs::File::create(path).expect("create image");
    f.set_len(4 * MIB).expect("size");
    for (at, data) in [
        (0, noise(4096)),
        (64 << 10, vec![0u8; 64 << 10]),
        (MIB, noise(512 << 10)),
        (4 * MIB - 512, noise(512)),
    ] {
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.write_all(&data).expect("write");
    }
    drop(f);
    std::fs::read(path).expect("read image")
}

/// Reads an AWS variable store with `virt-fw-vars` and checks it holds exactly the key
/// set's PK, KEK and db lists, under their UEFI names and vendor GUIDs.
fn check_uefi_data(store: &Path, keys: &KeySet, dir: &Path) {
    let json = dir.join("uefi-data.json");
    run_ok(
        Command::new(env_path("CRUST_TEST_VIRT_FW_VARS"))
            .arg("--input")
            .arg(store)
            .arg("--output-json")
            .arg(&json),
    );
    let vars: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("virt-fw-vars JSON");
    let vars = vars["variables"].as_array().expect("variables");
    assert_eq!(vars.len(), 3, "{vars:?}");
    for role in Role::ALL {
        let list = std::fs::read(keys.signature_list(role)).expect("list");
        let hex: String = list.iter().map(|b| format!("{b:02x}")).collect();
        let var = vars
            .iter()
            .find(|v| v["name"] == role.variable())
            .unwrap_or_else(|| panic!("no {} in the store: {vars:?}", role.variable()));
        assert_eq!(
            var["data"].as_str(),
            Some(hex.as_str()),
            "{}",
            role.variable()
        );
        assert_eq!(
            var["guid"].as_str(),
            Some(secureboot::lists::vendor(role).to_string().as_str()),
            "{}",
            role.variable()
        );
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/moto_check.py")
}

#[test]
#[ignore = "needs the AMI publisher and moto; run through `cargo xtask test`"]
fn ami_publish_against_moto() {
    let publisher = env_path("CRUST_TEST_AMI");
    let python = env_path("CRUST_TEST_MOTO_PYTHON");
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path();
    let image_path = dir.join("tiny.raw");
    let image = tiny_image(&image_path);
    let recording = dir.join("recording.jsonl");
    let keys = secureboot::generate(&dir.join("secure-boot"), "AMI test").expect("keygen");
    let uefi_data = secureboot::aws::uefi_data(&env_path("CRUST_TEST_UEFIVARS"), &keys)
        .expect("the AWS variable store");
    let uefi_file = dir.join("uefi-data");
    std::fs::write(&uefi_file, &uefi_data).expect("write the variable store");
    check_uefi_data(&uefi_file, &keys, dir);
    let moto = Moto::start(&python, &recording, &dir.join("moto.log"));

    // The standard credential chain, pointed at nothing real: keys from the environment,
    // no shared config, no instance metadata.
    let out = run_ok(
        Command::new(&publisher)
            .arg("--image")
            .arg(&image_path)
            .args(["--name", "crust-test-1.0", "--region", "us-east-1"])
            .args(["--endpoint-url", &moto.endpoint, "--workers", "16"])
            .arg("--uefi-data")
            .arg(&uefi_file)
            .env_remove("AWS_PROFILE")
            .env("HOME", dir)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true"),
    );
    let ami = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        ami.starts_with("ami-"),
        "stdout is not an AMI id: {ami:?}\n{stderr}"
    );
    let snapshot = stderr
        .split_whitespace()
        .find(|w| w.starts_with("snap-"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| panic!("no snapshot id in the output:\n{stderr}"))
        .to_owned();

    // The blocks, read back by boto3.
    let back = dir.join("readback.raw");
    let out = run_ok(
        Command::new(&python)
            .arg(script())
            .args(["readback", &moto.endpoint, &snapshot])
            .arg(&back),
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("readback JSON");
    let block = info["block_size"].as_u64().expect("block size") as usize;
    assert_eq!(
        info["volume_size_gib"], 1,
        "the 4 MiB image rounds up to 1 GiB"
    );
    let mut data = Vec::new();
    std::fs::File::open(&back)
        .and_then(|mut f| f.read_to_end(&mut data))
        .expect("read back");
    assert_eq!(data.len() as u64, 1 << 30);
    assert!(
        data[..image.len()] == image[..],
        "the snapshot's blocks differ from the image"
    );
    assert!(
        data[image.len()..].iter().all(|&b| b == 0),
        "the snapshot has data past the image"
    );
    let nonzero = image
        .chunks(block)
        .filter(|b| b.iter().any(|&x| x != 0))
        .count();
    assert_eq!(
        info["blocks"].as_u64(),
        Some(nonzero as u64),
        "the snapshot holds exactly the image's non-zero blocks"
    );

    // The requests as sent.
    drop(moto);
    let out = run_ok(
        Command::new(&python)
            .arg(script())
            .arg("requests")
            .arg(&recording),
    );
    let requests: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let puts = requests
        .iter()
        .filter(|r| {
            r["method"] == "PUT" && r["path"].as_str().is_some_and(|p| p.contains("/blocks/"))
        })
        .count();
    assert_eq!(
        puts, nonzero,
        "one PutSnapshotBlock per non-zero block, none for zeros"
    );
    let registers: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|r| r["action"] == "RegisterImage")
        .collect();
    assert_eq!(registers.len(), 1, "one RegisterImage");
    let params = &registers[0]["params"];
    for (key, value) in [
        ("Name", "crust-test-1.0"),
        ("Architecture", "x86_64"),
        ("BootMode", "uefi"),
        ("EnaSupport", "true"),
        ("ImdsSupport", "v2.0"),
        ("VirtualizationType", "hvm"),
        ("RootDeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", &snapshot),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ("UefiData", &uefi_data),
    ] {
        assert_eq!(params[key], value, "RegisterImage {key} in {params}");
    }
    // It waited for the snapshot before registering, and for the AMI after.
    let order: Vec<&str> = requests
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    let first = |a: &str| {
        order
            .iter()
            .position(|x| *x == a)
            .unwrap_or_else(|| panic!("no {a} request: {order:?}"))
    };
    assert!(
        first("DescribeSnapshots") < first("RegisterImage")
            && first("RegisterImage") < first("DescribeImages"),
        "{order:?}"
    );
}
