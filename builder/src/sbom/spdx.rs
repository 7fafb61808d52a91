//! SPDX 2.3 JSON rendering of an [`Sbom`]: one package per node, relationships for the
//! edges, `LicenseRef-` texts in `hasExtractedLicensingInfos`. Field order is fixed by the
//! structs below, so the bytes depend on the content only.

use serde::Serialize;

use super::{Node, Purpose, Rel, Release, Sbom, TOOL};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document<'a> {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    comment: String,
    packages: Vec<Package<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    has_extracted_licensing_infos: Vec<ExtractedInfo<'a>>,
    relationships: Vec<Relationship>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Package<'a> {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: &'a str,
    version_info: &'a str,
    supplier: String,
    download_location: &'a str,
    files_analyzed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<Checksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    homepage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<&'a str>,
    license_concluded: &'static str,
    license_declared: &'a str,
    copyright_text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalRef>,
    primary_package_purpose: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Checksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtractedInfo<'a> {
    license_id: &'a str,
    extracted_text: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

/// The SPDX id of a node.
pub(super) fn spdx_id(node: &Node) -> String {
    format!("SPDXRef-{}", node.id)
}

/// The external reference type (category OTHER) that carries the image's root hash.
pub(super) const ROOT_HASH_REF: &str = "crust-dm-verity-root-hash";

pub(super) fn render(sbom: &Sbom, release: Option<&Release>) -> Vec<u8> {
    let (which, comment) = match release {
        Some(_) => (
            "release",
            "The release's SBOM of this image (beside image.raw and in update.bundle): the \
             root file system's copy (/usr/share/crust/sbom.spdx.json) with the image's \
             dm-verity root hash and the root image's SHA-256, which a document inside the \
             root cannot hold.",
        ),
        None => (
            "root",
            "The root file system's copy of this image's SBOM (/usr/share/crust/sbom.spdx.json). \
             A document inside the root cannot name the root hash of the root that holds it: \
             the release's sbom.spdx.json is this document with the image's dm-verity root \
             hash and the root image's SHA-256.",
        ),
    };
    let packages = sbom
        .nodes
        .iter()
        .map(|n| package(sbom, n, release))
        .collect();
    let mut relationships = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".into(),
        relationship_type: "DESCRIBES",
        related_spdx_element: spdx_id(&sbom.nodes[0]),
    }];
    relationships.extend(sbom.edges.iter().map(|&(from, rel, to)| Relationship {
        spdx_element_id: spdx_id(&sbom.nodes[from]),
        relationship_type: match rel {
            Rel::Contains => "CONTAINS",
            Rel::DependsOn => "DEPENDS_ON",
            Rel::BuildDependencyOf => "BUILD_DEPENDENCY_OF",
        },
        related_spdx_element: spdx_id(&sbom.nodes[to]),
    }));
    let doc = Document {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        name: format!("{} {} ({which})", sbom.name, sbom.version),
        document_namespace: sbom.namespace(which),
        creation_info: CreationInfo {
            created: sbom.created(),
            creators: vec![format!("Tool: {TOOL}")],
        },
        comment: comment.to_owned(),
        packages,
        has_extracted_licensing_infos: sbom
            .licenses
            .iter()
            .map(|l| ExtractedInfo {
                license_id: &l.id,
                extracted_text: &l.text,
                name: &l.name,
            })
            .collect(),
        relationships,
    };
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

fn package<'a>(sbom: &Sbom, n: &'a Node, release: Option<&Release>) -> Package<'a> {
    let mut checksums: Vec<Checksum> = n
        .sha256
        .iter()
        .map(|s| Checksum {
            algorithm: "SHA256",
            checksum_value: s.clone(),
        })
        .collect();
    let mut external_refs: Vec<ExternalRef> = n
        .purl
        .iter()
        .map(|p| ExternalRef {
            reference_category: "PACKAGE-MANAGER",
            reference_type: "purl",
            reference_locator: p.clone(),
        })
        .collect();
    let mut comment = n.comment.clone();
    if let Some(r) = release {
        if n.id == super::ids::IMAGE {
            external_refs.push(ExternalRef {
                reference_category: "OTHER",
                reference_type: ROOT_HASH_REF,
                reference_locator: r.root_hash.to_hex(),
            });
            comment = Some(format!(
                "build id {}; dm-verity root hash {}",
                sbom.build_id, r.root_hash
            ));
        } else if n.id == super::ids::ROOT {
            checksums.push(Checksum {
                algorithm: "SHA256",
                checksum_value: r.root_sha256.to_hex(),
            });
        }
    }
    Package {
        spdx_id: spdx_id(n),
        name: &n.name,
        version_info: &n.version,
        supplier: n.supplier.as_ref().map_or_else(
            || "NOASSERTION".to_owned(),
            |s| format!("Organization: {s}"),
        ),
        download_location: n.download.as_deref().unwrap_or("NOASSERTION"),
        files_analyzed: false,
        checksums,
        homepage: n.homepage.as_deref(),
        source_info: n.source_info.as_deref(),
        license_concluded: "NOASSERTION",
        license_declared: n.license.as_deref().unwrap_or("NOASSERTION"),
        copyright_text: "NOASSERTION",
        summary: n.summary.as_deref(),
        comment,
        external_refs,
        primary_package_purpose: match n.purpose {
            Purpose::OperatingSystem => "OPERATING-SYSTEM",
            Purpose::Archive => "ARCHIVE",
            Purpose::Firmware => "FIRMWARE",
            Purpose::Container => "CONTAINER",
            Purpose::Application => "APPLICATION",
            Purpose::Library => "LIBRARY",
        },
    }
}
