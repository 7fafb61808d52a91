//! The Crust image builder: a TOML profile in, a signed, verified A/B GPT disk image out.
//!
//! The pipeline follows the data (see `docs/ARCHITECTURE.md`):
//! [`profile`] → [`lock`] → [`fetch`] (through [`apt`]) → [`deb`] into a [`tree`] →
//! [`rootfs`] → [`verity`] → [`sign`] → [`initramfs`] (with [`kernel`] modules) → [`uki`]
//! (its PCR 11 policy signed by [`measure`], the whole signed by [`secureboot`] when the
//! profile asks) → [`esp`] (on [`fat`]) → [`disk`] (the state partition made by [`state`],
//! or left for the host to encrypt: [`sealed`]) → [`formats`] → [`release`], with the
//! [`sbom`] of what went in. [`build`] drives the
//! steps; [`report`] tells the user.
//!
//! Everything is built from files in user space (no loop devices, mounts or root
//! privileges) and deterministically: the same profile, lock, key, init binary and
//! `SOURCE_DATE_EPOCH` give a bit-identical image.

pub mod apt;
pub mod backup_gpt;
pub mod build;
pub mod bundle;
pub mod deb;
pub mod disk;
pub mod esp;
pub mod fat;
pub mod fetch;
pub mod formats;
pub mod fuzz;
pub mod initramfs;
pub mod installer;
pub mod kernel;
pub mod lock;
pub mod measure;
pub mod oci;
pub mod output;
pub mod profile;
pub mod release;
pub mod repo;
pub mod report;
pub mod rootfs;
pub mod sbom;
pub mod sealed;
pub mod secureboot;
pub mod service;
pub mod sign;
pub mod sparse;
pub mod state;
pub mod tree;
pub mod uki;
pub mod verity;
