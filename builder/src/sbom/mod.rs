//! The software bill of materials of an image: what is inside it, from the same pinned
//! inputs the image is built from, as SPDX 2.3 and CycloneDX 1.5 JSON (`docs/FORMAT.md`
//! §13).
//!
//! [`Sbom::gather`] collects the components: every Debian package of the root, of each
//! service image and of the kernel and boot set (control fields and copyright licenses read
//! from the `.deb`s the lock pins, [`debian`]), the init and every crate compiled into it
//! ([`cargo`]), and the OCI images of services. Above them sit the image and its parts:
//!
//! ```text
//! DOCUMENT DESCRIBES image
//! image CONTAINS root, boot          root: the squashfs; boot: the UKI and systemd-boot
//! root CONTAINS root .debs, init, service-<name>
//! boot CONTAINS kernel .deb, boot .deb, init (in the initramfs)
//! service-<name> CONTAINS its .debs or its OCI image
//! init CONTAINS linked crates; macro crates BUILD_DEPENDENCY_OF init
//! package DEPENDS_ON package         within one root, service image or crate graph
//! ```
//!
//! A document in the root cannot name the root hash of the root that holds it, so there are
//! two renderings of one content: [`Sbom::spdx`] without [`Release`] facts is the copy in
//! the root (`/usr/share/crust/sbom.spdx.json`); with them (the image's dm-verity root hash
//! and the root image's SHA-256) it is the release's `sbom.spdx.json`, which the update
//! bundle also carries. [`Sbom::cyclonedx`] renders the release's content as
//! `sbom.cdx.json`. Everything is deterministic: sorted components, the build's
//! `SOURCE_DATE_EPOCH` as the only time, identifiers derived from the build id.

pub mod cargo;
mod cyclonedx;
pub mod debian;
pub mod license;
pub mod read;
mod spdx;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use crust_format::Digest;
use rayon::prelude::*;

use crate::fetch::{Cache, Deb};
use crate::lock::Role;
pub use cargo::Crate;
use debian::Copyright;
use license::Extracted;

/// Where the root holds its SBOM (the document without the release's facts).
pub const ROOT_PATH: &str = "usr/share/crust/sbom.spdx.json";

/// The tool named as the documents' creator.
const TOOL: &str = concat!("crust-builder-", env!("CARGO_PKG_VERSION"));

/// What a build knows when it makes the SBOM (before the root exists).
#[derive(Debug)]
pub struct Inputs<'a> {
    /// Image name.
    pub name: &'a str,
    /// Image version.
    pub version: &'a str,
    /// The profile's name.
    pub profile: &'a str,
    /// The build id (the documents' namespaces derive from it).
    pub build_id: Digest,
    /// `SOURCE_DATE_EPOCH`: the documents' creation time.
    pub epoch: u64,
    /// Debian's main archive (download locations).
    pub mirror: &'a str,
    /// Debian's security archive, if the profile uses one.
    pub security_mirror: Option<&'a str>,
    /// Every package the lock pins, verified in the cache.
    pub debs: &'a [Deb],
    /// The package cache (which also keeps what was read from each `.deb`).
    pub cache: &'a Cache,
    /// SHA-256 of the init binary.
    pub init: Digest,
    /// The crates compiled into the init ([`cargo::init_crates`]), the init's own first;
    /// `None` when the build was not told.
    pub init_crates: Option<&'a [Crate]>,
    /// The observability agent in the root, if the image has it: its SHA-256 and its
    /// crates (its own first), when known.
    pub observe: Option<(Digest, Option<&'a [Crate]>)>,
    /// The services whose images are baked into the root, in start order.
    pub services: &'a [Service],
}

/// A service with an image in the root.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// What its image is.
    pub image: ServiceImage,
}

/// A service's image.
#[derive(Debug, Clone)]
pub enum ServiceImage {
    /// Assembled from Debian packages (the lock's role `service` entries for it).
    Debian,
    /// An OCI image.
    Oci {
        /// The repository's last path part (or the layout's tag or folder name).
        name: String,
        /// The manifest digest (`sha256:…`).
        digest: String,
        /// `host[:port]/repository`, for images from a registry.
        repository: Option<String>,
        /// The tag it was asked for by, if any.
        tag: Option<String>,
        /// The image's `org.opencontainers.image.vendor` label.
        vendor: Option<String>,
    },
}

/// What only the finished image knows: the release rendering adds these.
#[derive(Debug, Clone, Copy)]
pub struct Release {
    /// The dm-verity root hash (the manifest's `root-hash`).
    pub root_hash: Digest,
    /// SHA-256 of the root image (the squashfs written to the root partition).
    pub root_sha256: Digest,
}

/// What a node is, for SPDX's `primaryPackagePurpose` and CycloneDX's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Purpose {
    OperatingSystem,
    Archive,
    Firmware,
    Container,
    Application,
    Library,
}

/// How one node relates to another (SPDX relationship types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rel {
    Contains,
    DependsOn,
    BuildDependencyOf,
}

/// Suppliers (SPDX: "the actual distribution source"): Debian for its packages, crates.io
/// for crates, Crust for the image, its parts and the workspace's crates.
const DEBIAN: &str = "Debian";
const CRATES_IO: &str = "crates.io";
const CRUST: &str = "Crust";

/// One package of the documents.
#[derive(Debug, Clone)]
struct Node {
    /// SPDX id without `SPDXRef-`; CycloneDX `bom-ref`.
    id: String,
    name: String,
    version: String,
    purpose: Purpose,
    /// The supplier organisation; `None` is NOASSERTION.
    supplier: Option<String>,
    /// Where a Debian package sits: `root`, `kernel`, `boot` or `service-<name>`.
    place: Option<String>,
    download: Option<String>,
    sha256: Option<String>,
    purl: Option<String>,
    /// SPDX expression; `None` is NOASSERTION.
    license: Option<String>,
    homepage: Option<String>,
    summary: Option<String>,
    source_info: Option<String>,
    comment: Option<String>,
    /// CycloneDX properties (and facts the SPDX comment repeats).
    properties: Vec<(&'static str, String)>,
}

impl Node {
    fn new(id: String, name: &str, version: &str, purpose: Purpose, supplier: &str) -> Self {
        Node {
            id,
            name: name.to_owned(),
            version: version.to_owned(),
            purpose,
            supplier: Some(supplier.to_owned()),
            place: None,
            download: None,
            sha256: None,
            purl: None,
            license: None,
            homepage: None,
            summary: None,
            source_info: None,
            comment: None,
            properties: Vec::new(),
        }
    }
}

/// The content of an image's SBOM, ready to render.
#[derive(Debug, Clone)]
pub struct Sbom {
    name: String,
    version: String,
    build_id: Digest,
    epoch: u64,
    /// In document order: image, root, boot, services, init, then components.
    nodes: Vec<Node>,
    /// (from, relationship, to) by node id.
    edges: BTreeSet<(usize, Rel, usize)>,
    licenses: BTreeSet<Extracted>,
}

/// Fixed node ids of the image's parts.
mod ids {
    pub const IMAGE: &str = "image";
    pub const ROOT: &str = "root";
    pub const BOOT: &str = "boot";
    pub const INIT: &str = "init";
    pub const OBSERVE: &str = "observe";
}

/// An SPDX id part: letters, digits, `.` and `-` only.
fn id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Percent-encodes a purl segment or qualifier value (everything but unreserved characters).
fn purl_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Sbom {
    /// Collects the components of the image `inputs` describe (every `.deb`'s control and
    /// copyright files are read in parallel, or taken from the cache).
    pub fn gather(inputs: &Inputs<'_>) -> Result<Self> {
        let facts: Vec<debian::Facts> = inputs
            .debs
            .par_iter()
            .map(|d| {
                debian::read_cached(inputs.cache, d).with_context(|| {
                    format!(
                        "cannot read {} ({}) for the SBOM",
                        d.package,
                        d.path.display()
                    )
                })
            })
            .collect::<Result<_>>()?;
        let mut b = Builder::default();
        let (name, version) = (inputs.name, inputs.version);
        let mut image = Node::new(
            ids::IMAGE.into(),
            name,
            version,
            Purpose::OperatingSystem,
            CRUST,
        );
        image.summary = Some(format!(
            "Crust image {name} {version} ({} profile)",
            inputs.profile
        ));
        image.comment = Some(format!("build id {}", inputs.build_id));
        image
            .properties
            .push(("crust:build-id", inputs.build_id.to_hex()));
        image
            .properties
            .push(("crust:profile", inputs.profile.to_owned()));
        let image = b.add(image)?;
        let mut root = Node::new(
            ids::ROOT.into(),
            &format!("{name}-root"),
            version,
            Purpose::Archive,
            CRUST,
        );
        root.summary = Some("the root file system (squashfs, read-only under dm-verity)".into());
        let root = b.add(root)?;
        let mut boot = Node::new(
            ids::BOOT.into(),
            &format!("{name}-boot"),
            version,
            Purpose::Firmware,
            CRUST,
        );
        boot.summary = Some(
            "the kernel and boot loader: the unified kernel image (kernel, initramfs with the \
             init) and systemd-boot on the ESP"
                .into(),
        );
        let boot = b.add(boot)?;
        b.edge(image, Rel::Contains, root);
        b.edge(image, Rel::Contains, boot);

        // Services with images in the root.
        let mut service_nodes = BTreeMap::new();
        for s in inputs.services {
            let mut node = Node::new(
                format!("service-{}", id_part(&s.name)),
                &format!("{name}-service-{}", s.name),
                version,
                Purpose::Container,
                CRUST,
            );
            node.summary = Some(format!("the image of service {}", s.name));
            let id = b.add(node)?;
            b.edge(root, Rel::Contains, id);
            service_nodes.insert(s.name.clone(), id);
        }

        // The init and its crates.
        let init = b.add(init_node(inputs))?;
        b.edge(root, Rel::Contains, init);
        b.edge(boot, Rel::Contains, init);
        if let Some(crates) = inputs.init_crates {
            add_crates(&mut b, init, crates)?;
        }
        // The observability agent and its crates (those it shares with the init are the
        // same components).
        if let Some((digest, crates)) = inputs.observe {
            let observe = b.add(program_node(
                ids::OBSERVE,
                "observe",
                digest,
                crates,
                "the observability agent (Prometheus exporter, syslog shipper): \
                 /usr/libexec/crust/observe in the root",
            ))?;
            b.edge(root, Rel::Contains, observe);
            if let Some(crates) = crates {
                add_crates(&mut b, observe, crates)?;
            }
        }

        // Debian packages, by role: root, kernel, boot, then services.
        let mut debs: Vec<(&Deb, &debian::Facts)> = inputs.debs.iter().zip(&facts).collect();
        debs.sort_by(|(a, _), (b, _)| {
            (a.package.role, &a.package.service, &a.package.name).cmp(&(
                b.package.role,
                &b.package.service,
                &b.package.name,
            ))
        });
        let mut scopes: BTreeMap<(Role, Option<String>), Vec<usize>> = BTreeMap::new();
        let mut facts_of: BTreeMap<usize, &debian::Facts> = BTreeMap::new();
        for (deb, f) in &debs {
            let p = &deb.package;
            if p.name != f.package || p.version != f.version {
                bail!(
                    "{} is {} {} inside, not the {} {} the lock pins: the cache is corrupt; \
                     delete it and build again",
                    deb.path.display(),
                    f.package,
                    f.version,
                    p.name,
                    p.version
                );
            }
            let (parent, scope) = match (p.role, &p.service) {
                (Role::Root, _) => (root, "root".to_owned()),
                (Role::Kernel, _) => (boot, "kernel".to_owned()),
                (Role::Boot, _) => (boot, "boot".to_owned()),
                (Role::Service, Some(s)) => match service_nodes.get(s) {
                    Some(&id) => (id, format!("service-{}", id_part(s))),
                    // A lock entry for a service the profile no longer has: not in the image.
                    None => continue,
                },
                (Role::Service, None) => bail!("lock entry {p} has role service but no service"),
            };
            let node = deb_node(&scope, deb, f, &facts, inputs);
            if let Copyright::Declared(d) = copyright_of(f, &facts) {
                b.licenses.extend(d.extracted.iter().cloned());
            }
            let id = b.add(node)?;
            facts_of.insert(id, f);
            b.edge(parent, Rel::Contains, id);
            scopes
                .entry((p.role, p.service.clone()))
                .or_default()
                .push(id);
        }
        // Dependencies between the packages of one root or service image.
        for members in scopes.values() {
            let by_name: BTreeMap<&str, usize> = members
                .iter()
                .flat_map(|&id| {
                    let f = facts_of[&id];
                    std::iter::once((f.package.as_str(), id))
                        .chain(f.provides.iter().map(move |p| (p.as_str(), id)))
                })
                .collect();
            for &id in members {
                let f = facts_of[&id];
                for alternatives in &f.depends {
                    if let Some(&dep) = alternatives.iter().find_map(|a| by_name.get(a.as_str()))
                        && dep != id
                    {
                        b.edge(id, Rel::DependsOn, dep);
                    }
                }
            }
        }

        // OCI images of services.
        for s in inputs.services {
            if let ServiceImage::Oci {
                name: image_name,
                digest,
                repository,
                tag,
                vendor,
            } = &s.image
            {
                let mut node = Node::new(
                    format!("oci-{}", id_part(&s.name)),
                    image_name,
                    digest,
                    Purpose::Container,
                    CRUST,
                );
                // The image's vendor, else the registry it came from; an image from a
                // layout without a vendor label has no known supplier.
                node.supplier = vendor.clone().or_else(|| {
                    repository
                        .as_ref()
                        .map(|r| r.split('/').next().unwrap_or(r).to_owned())
                });
                node.sha256 = digest.strip_prefix("sha256:").map(str::to_owned);
                let mut qualifiers = Vec::new();
                if let Some(r) = repository {
                    qualifiers.push(format!("repository_url={}", purl_encode(r)));
                }
                if let Some(t) = tag {
                    qualifiers.push(format!("tag={}", purl_encode(t)));
                }
                node.purl = Some(format!(
                    "pkg:oci/{}@{}{}{}",
                    purl_encode(&image_name.to_ascii_lowercase()),
                    purl_encode(digest),
                    if qualifiers.is_empty() { "" } else { "?" },
                    qualifiers.join("&")
                ));
                node.properties.push(("crust:service", s.name.clone()));
                let id = b.add(node)?;
                b.edge(service_nodes[&s.name], Rel::Contains, id);
            }
        }

        Ok(Sbom {
            name: name.to_owned(),
            version: version.to_owned(),
            build_id: inputs.build_id,
            epoch: inputs.epoch,
            nodes: b.nodes,
            edges: b.edges,
            licenses: b.licenses,
        })
    }

    /// The SPDX 2.3 JSON document: the root's copy without `release`, the release's with it.
    pub fn spdx(&self, release: Option<&Release>) -> Vec<u8> {
        spdx::render(self, release)
    }

    /// The CycloneDX 1.5 JSON rendering of the release's document.
    pub fn cyclonedx(&self, release: &Release) -> Vec<u8> {
        cyclonedx::render(self, release)
    }

    /// The documents' creation time (RFC 3339).
    fn created(&self) -> String {
        crust_format::utc::UtcTime::from_unix(i64::try_from(self.epoch).unwrap_or(i64::MAX))
            .to_string()
    }

    /// The SPDX document namespace of the root's (`root`) or the release's (`release`) copy.
    fn namespace(&self, which: &str) -> String {
        format!(
            "https://spdx.org/spdxdocs/crust/{}/{}/{}/{which}",
            purl_encode(&self.name),
            purl_encode(&self.version),
            self.build_id
        )
    }
}

/// Accumulates nodes and edges, refusing duplicate ids.
#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    index: BTreeMap<String, usize>,
    edges: BTreeSet<(usize, Rel, usize)>,
    licenses: BTreeSet<Extracted>,
}

impl Builder {
    fn add(&mut self, node: Node) -> Result<usize> {
        let at = self.nodes.len();
        if self.index.insert(node.id.clone(), at).is_some() {
            bail!(
                "two SBOM components have the id {}: rename one of them",
                node.id
            );
        }
        self.nodes.push(node);
        Ok(at)
    }

    fn edge(&mut self, from: usize, rel: Rel, to: usize) {
        self.edges.insert((from, rel, to));
    }
}

/// The init: the crate `crust-init` when its crates are known.
fn init_node(inputs: &Inputs<'_>) -> Node {
    program_node(
        ids::INIT,
        "init",
        inputs.init,
        inputs.init_crates,
        "PID 1: /usr/sbin/init in the root and /init in the initramfs",
    )
}

/// A program of Crust's: its crate when its crates are known, else its `name` and digest.
fn program_node(
    id: &str,
    name: &str,
    digest: Digest,
    crates: Option<&[Crate]>,
    summary: &str,
) -> Node {
    let (name, version) = match crates.and_then(|c| c.first()) {
        Some(c) => (c.name.clone(), c.version.clone()),
        None => (name.to_owned(), format!("sha256:{}", digest.short(12))),
    };
    let mut node = Node::new(id.into(), &name, &version, Purpose::Application, CRUST);
    node.sha256 = Some(digest.to_hex());
    node.summary = Some(summary.into());
    if let Some(c) = crates.and_then(|c| c.first()) {
        node.license = c.license.as_deref().and_then(license::cargo_expression);
        node.purl = Some(format!(
            "pkg:cargo/{}@{}",
            purl_encode(&c.name),
            purl_encode(&c.version)
        ));
    } else {
        node.comment = Some(format!(
            "The crates compiled into this {} were not given to the builder \
             (crust-builder --init-cargo), so none are listed.",
            if id == ids::INIT { "init" } else { "program" }
        ));
    }
    node
}

/// A program's crates: linked ones CONTAINed, macro-only ones its build dependencies, and
/// the dependency edges between them. A crate another program already brought in is the
/// same component, with one more edge.
fn add_crates(b: &mut Builder, init: usize, crates: &[Crate]) -> Result<()> {
    let mut by_key = BTreeMap::new();
    if let Some(own) = crates.first() {
        by_key.insert(own.key(), init);
    }
    for c in crates.iter().skip(1) {
        let crate_id = format!("crate-{}-{}", id_part(&c.name), id_part(&c.version));
        if let Some(&id) = b.index.get(&crate_id) {
            by_key.insert(c.key(), id);
            if c.linked {
                b.edge(init, Rel::Contains, id);
            } else {
                b.edge(id, Rel::BuildDependencyOf, init);
            }
            continue;
        }
        let mut node = Node::new(
            crate_id,
            &c.name,
            &c.version,
            Purpose::Library,
            match &c.source {
                cargo::Source::CratesIo => CRATES_IO,
                cargo::Source::Path => CRUST,
                cargo::Source::Registry(url) | cargo::Source::Git(url) => url,
            },
        );
        if c.source == cargo::Source::CratesIo {
            node.download = Some(format!(
                "https://crates.io/api/v1/crates/{}/{}/download",
                c.name, c.version
            ));
        }
        node.sha256 = c.checksum.clone();
        node.license = c.license.as_deref().and_then(license::cargo_expression);
        node.purl = Some(format!(
            "pkg:cargo/{}@{}",
            purl_encode(&c.name),
            purl_encode(&c.version)
        ));
        node.properties.push((
            "crust:linked",
            if c.linked {
                "true"
            } else {
                "false (build only)"
            }
            .to_owned(),
        ));
        if !c.linked {
            node.comment = Some(
                "Compiled for the build only (a procedural macro or a crate only macros use): \
                 its code runs in the compiler, not in the init."
                    .into(),
            );
        }
        let id = b.add(node)?;
        by_key.insert(c.key(), id);
        if c.linked {
            b.edge(init, Rel::Contains, id);
        } else {
            b.edge(id, Rel::BuildDependencyOf, init);
        }
    }
    for c in crates {
        let from = by_key[&c.key()];
        for d in &c.depends {
            let to = *by_key.get(d).with_context(|| {
                format!("crate {} depends on {d}, which is not in the list", c.key())
            })?;
            b.edge(from, Rel::DependsOn, to);
        }
    }
    Ok(())
}

/// A package's copyright, following a documentation folder shared with another package of
/// the same source.
fn copyright_of<'a>(f: &'a debian::Facts, all: &'a [debian::Facts]) -> &'a Copyright {
    match &f.copyright {
        Copyright::SameAs(other) => all
            .iter()
            .find(|o| &o.package == other && o.source == f.source)
            .map(|o| &o.copyright)
            .unwrap_or(&f.copyright),
        c => c,
    }
}

/// One Debian package's node.
fn deb_node(
    scope: &str,
    deb: &Deb,
    f: &debian::Facts,
    all: &[debian::Facts],
    inputs: &Inputs<'_>,
) -> Node {
    let p = &deb.package;
    let mut node = Node::new(
        format!("deb-{scope}-{}", id_part(&p.name)),
        &p.name,
        &p.version,
        Purpose::Library,
        DEBIAN,
    );
    let mirror = match inputs.security_mirror {
        Some(security) if p.filename.starts_with("pool/updates/") => security,
        _ => inputs.mirror,
    };
    node.download = Some(format!("{}/{}", mirror.trim_end_matches('/'), p.filename));
    node.sha256 = Some(p.sha256.clone());
    node.homepage = f.homepage.clone();
    node.summary = f.summary.clone();
    node.source_info = Some(format!(
        "built from Debian source package {} {}",
        f.source, f.source_version
    ));
    let mut qualifiers = vec![
        format!("arch={}", purl_encode(&p.architecture)),
        "distro=debian-12".to_owned(),
    ];
    if f.source != f.package || f.source_version != f.version {
        let upstream = if f.source_version == f.version {
            f.source.clone()
        } else {
            format!("{}@{}", f.source, f.source_version)
        };
        qualifiers.push(format!("upstream={}", purl_encode(&upstream)));
    }
    node.purl = Some(format!(
        "pkg:deb/debian/{}@{}?{}",
        purl_encode(&p.name),
        purl_encode(&p.version),
        qualifiers.join("&")
    ));
    let copyright = copyright_of(f, all);
    node.license = match copyright {
        Copyright::Declared(d) => Some(d.expression.clone()),
        _ => None,
    };
    node.comment = Some(match copyright {
        Copyright::Declared(_) => match &f.copyright {
            Copyright::SameAs(other) => format!(
                "Licenses as declared by the machine-readable copyright file of {other} \
                 (its documentation folder is {other}'s)."
            ),
            _ => "Licenses as declared by its machine-readable copyright file.".into(),
        },
        Copyright::NotMachineReadable => {
            "Its copyright file is not machine-readable (DEP-5): licenses not asserted.".into()
        }
        Copyright::Missing | Copyright::SameAs(_) => {
            "It has no copyright file of its own: licenses not asserted.".into()
        }
    });
    node.place = Some(scope.to_owned());
    node.properties
        .push(("crust:architecture", p.architecture.clone()));
    node.properties.push((
        "crust:source-package",
        format!("{} {}", f.source, f.source_version),
    ));
    if let Some(m) = &f.maintainer {
        node.properties.push(("crust:maintainer", m.clone()));
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(services: &'a [Service], cache: &'a Cache) -> Inputs<'a> {
        Inputs {
            name: "crust",
            version: "0.2.0",
            profile: "test",
            build_id: Digest::of(b"build"),
            epoch: 1_795_906_207,
            mirror: "http://deb.debian.org/debian",
            security_mirror: None,
            debs: &[],
            cache,
            init: Digest::of(b"init"),
            init_crates: None,
            observe: None,
            services,
        }
    }

    #[test]
    fn oci_images_and_the_release_facts_render_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let digest = format!("sha256:{}", Digest::of(b"manifest"));
        let services = [Service {
            name: "app".into(),
            image: ServiceImage::Oci {
                name: "App".into(),
                digest: digest.clone(),
                repository: Some("localhost:5000/team/app".into()),
                tag: Some("1.0".into()),
                vendor: None,
            },
        }];
        let sbom = Sbom::gather(&inputs(&services, &cache)).unwrap();
        let release = Release {
            root_hash: Digest::of(b"root hash"),
            root_sha256: Digest::of(b"root"),
        };
        let root_copy = sbom.spdx(None);
        let release_copy = sbom.spdx(Some(&release));
        assert_eq!(root_copy, sbom.spdx(None), "rendering is deterministic");

        let inner = read::parse(&root_copy, "root").unwrap();
        let outer = read::parse(&release_copy, "release").unwrap();
        assert_eq!(inner.entries, outer.entries);
        assert_eq!(inner.root_hash, None);
        assert_eq!(outer.root_hash, Some(release.root_hash.to_hex()));
        let oci = outer.entries.iter().find(|e| e.kind == "oci").unwrap();
        assert_eq!(
            (oci.name.as_str(), oci.version.as_str(), oci.place.as_str()),
            ("App", digest.as_str(), "service-app")
        );

        let doc: serde_json::Value = serde_json::from_slice(&release_copy).unwrap();
        assert_eq!(doc["creationInfo"]["created"], "2026-11-28T22:50:07Z");
        let package = |id: &str| {
            doc["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["SPDXID"] == id)
                .unwrap()
                .clone()
        };
        let image = package("SPDXRef-oci-app");
        assert_eq!(
            image["externalRefs"][0]["referenceLocator"],
            format!(
                "pkg:oci/app@sha256%3A{}?repository_url=localhost%3A5000%2Fteam%2Fapp&tag=1.0",
                Digest::of(b"manifest")
            )
        );
        assert_eq!(image["supplier"], "Organization: localhost:5000");
        // Without the init's crates, the init is listed alone and says so.
        let init = package("SPDXRef-init");
        assert_eq!(init["name"], "init");
        assert!(init["comment"].as_str().unwrap().contains("--init-cargo"));

        let cdx: serde_json::Value = serde_json::from_slice(&sbom.cyclonedx(&release)).unwrap();
        assert_eq!(cdx["specVersion"], "1.5");
        let root_hash = cdx["metadata"]["component"]["properties"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "crust:root-hash")
            .map(|p| p["value"].clone());
        assert_eq!(root_hash, Some(release.root_hash.to_hex().into()));
        assert!(
            cdx["serialNumber"]
                .as_str()
                .unwrap()
                .starts_with("urn:uuid:")
        );
    }
}
