//! The installer's medium (docs/FORMAT.md §15): an ISO 9660 file system labelled
//! [`LABEL`] — a CD, BMC virtual media or a USB stick written with `dd` (the ISO is hybrid) —
//! that boots the installer UKI and carries, under [`DIR`], the release it installs and its
//! own signed list.
//!
//! ```text
//! crust/image.raw.zst       the release's disk image, zstd
//! crust/user-data           the installer's user-data, if the build was given one
//! crust/SHA256SUMS          image.raw (the image's digest once decompressed), image.raw.zst,
//!                           and user-data: what the installer checks before writing
//! crust/SHA256SUMS.sig      Ed25519 over SHA256SUMS, by the image's signing key
//! ```
//!
//! When the medium carries user-data, the installer copies it, with the medium's list and
//! the list's signature, into [`ESP_DIR`] on the installed disk's ESP: the installed host
//! reads it from there (source `install`) only if the list's signature verifies with the
//! image's key and the user-data matches its line.
//!
//! The installer UKI is the image's own kernel and initramfs with [`INSTALL_OPTION`] on its
//! command line; the netboot UKI has [`NETBOOT_OPTION`] instead.

/// The medium's file system label.
pub const LABEL: &str = "CRUST-INSTALL";
/// The folder holding the release on the medium.
pub const DIR: &str = "crust";
/// The compressed image on the medium.
pub const IMAGE: &str = "image.raw.zst";
/// The image's name in the list (the digest of the decompressed image).
pub const RAW_IMAGE: &str = "image.raw";
/// The installer's user-data on the medium.
pub const USER_DATA: &str = "user-data";
/// The folder on an installed disk's ESP holding the medium's [`USER_DATA`], [`SUMS`] and
/// [`SUMS_SIG`], copied verbatim by the installer.
///
/// [`SUMS`]: crate::sums::SUMS
/// [`SUMS_SIG`]: crate::sums::SUMS_SIG
pub const ESP_DIR: &str = "EFI/crust/install";
/// The kernel command line option that starts the installer instead of the host.
pub const INSTALL_OPTION: &str = "crust.install";
/// The kernel command line option of a network-booted (diskless) host.
pub const NETBOOT_OPTION: &str = "crust.netboot";
/// The kernel command line option naming the folder (an `http://` or `https://` URL) a
/// network-booted host fetches [`NETBOOT_ROOT`] and [`NETBOOT_VERITY`] from.
pub const NETBOOT_URL_OPTION: &str = "crust.netboot.url";
/// In a build's output folder: the `crust.netboot.url` the netboot UKI was made with
/// (empty: none), so that a build asking for another one makes the UKI again.
pub const NETBOOT_URL_RECORD: &str = "netboot-url";
/// The installer UKI in a build's output folder.
pub const INSTALLER_UKI: &str = "installer.efi";
/// The netboot UKI in a build's output folder (and its `netboot/` folder).
pub const NETBOOT_UKI: &str = "netboot.efi";
/// The root image in a netboot folder.
pub const NETBOOT_ROOT: &str = "root.img";
/// The verity image in a netboot folder.
pub const NETBOOT_VERITY: &str = "verity.img";
