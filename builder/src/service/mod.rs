//! Services: the `[[service]]` declarations of a profile, checked at build time, and what
//! the init runs for each, inside the read-only root.
//!
//! A declaration says what runs ([`ServiceKind`]) and how. Most services are containers made
//! from an image (Debian packages the builder assembles, an OCI image layout on disk, or an
//! image in a registry) and run by crun; a `host` service is a program of the root itself
//! run in the host's namespaces (containerd), and an `image.pull` service names an image
//! that containerd pulls at boot. Nothing here runs at boot. The modules, in the order data
//! flows:
//!
//! - `decl`: the tables as written, their checks ([`resolve`]: every field, names,
//!   dependencies, cycles, with the profile line) and the admin container ([`admin`]);
//! - `bundle`: a declaration plus its image turned into an OCI runtime bundle (root file
//!   system and `config.json`), or a `process.json` for host programs and pulls, with the
//!   init's [`ServiceSpec`](crust_format::service::ServiceSpec); [`install`] puts them in
//!   the root;
//! - `seccomp`: Crust's seccomp profile (an allow list compared call by call with Docker's
//!   default), decided at build time from the container's capabilities and what its
//!   declaration adds; `syscalls`: the system call names libseccomp knows, which
//!   `seccomp-allow` is checked against.

mod bundle;
mod decl;
mod seccomp;
mod syscalls;

pub use bundle::{Bundle, Contents, HostFacts, bundle, install, process_service};
pub use decl::{
    ADMIN, IdRange, ImageSource, Network, ServiceDecl, ServiceKind, ServiceToml, VarMount, admin,
    resolve,
};
pub use seccomp::Seccomp;

use crate::profile::{Origin, ProfileError};

/// A profile error about `field` of the service `service` declared at `at`.
fn invalid(at: &Origin, service: &str, field: &str, message: String) -> ProfileError {
    ProfileError::Invalid {
        at: at.clone(),
        field: format!("service {service}: {field}"),
        message,
    }
}

/// Declarations and images shared by the modules' tests.
#[cfg(test)]
mod testing {
    use std::path::Path;
    use std::sync::Arc;

    use serde::Deserialize;

    use super::*;
    use crate::profile::Located;
    use crate::tree::{Entry, Tree};

    pub fn at() -> Origin {
        Origin {
            file: Arc::from(Path::new("p.toml")),
            line: 9,
        }
    }

    pub fn decl(toml_text: &str) -> Result<Vec<ServiceDecl>, ProfileError> {
        #[derive(Deserialize)]
        struct Doc {
            service: Vec<ServiceToml>,
        }
        let doc: Doc = toml::from_str(toml_text).unwrap();
        resolve(
            doc.service
                .into_iter()
                .map(|value| Located { value, at: at() })
                .collect(),
            None,
        )
    }

    pub const WEB: &str = "[[service]]\nname = \"web\"\nimage.debian = [\"busybox-static\"]\n";

    pub fn busybox_tree() -> Tree {
        let mut t = Tree::new();
        t.insert("usr/bin/busybox", Entry::file(&b"\x7fELF"[..], 0o755))
            .unwrap();
        t.insert("bin", Entry::symlink("usr/bin")).unwrap();
        t
    }

    pub fn oci(b: &Bundle) -> (&Tree, &str) {
        match &b.contents {
            Contents::Oci { rootfs, config } => (rootfs, config),
            Contents::Process { .. } => panic!("{} is not a bundle", b.name),
        }
    }

    pub fn host() -> HostFacts {
        HostFacts {
            image_name: "crust".into(),
            image_version: "0.1.0".into(),
        }
    }

    pub const CONTAINERD: &str = "[[service]]\nname = \"containerd\"\nhost = [\"/usr/bin/containerd\", \"--config\", \"/etc/containerd/config.toml\"]\nhealth = { command = [\"/usr/bin/ctr\", \"version\"] }\n";
}
