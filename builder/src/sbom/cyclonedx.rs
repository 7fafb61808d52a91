//! CycloneDX 1.5 JSON rendering of an [`Sbom`], the release's content: the image is
//! `metadata.component` (its root hash a `crust:root-hash` property), every other node a
//! component (`bom-ref` = the SPDX id without `SPDXRef-`), and `dependencies` carries both
//! SPDX's CONTAINS and DEPENDS_ON edges. Crates compiled for the build only have `scope`
//! `excluded`. The serial number is a UUID derived from the build id.

use serde::Serialize;

use super::{Node, Purpose, Rel, Release, Sbom};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bom<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    bom_format: &'static str,
    spec_version: &'static str,
    serial_number: String,
    version: u32,
    metadata: Metadata<'a>,
    components: Vec<Component<'a>>,
    dependencies: Vec<Dependency<'a>>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    timestamp: String,
    tools: Tools,
    component: Component<'a>,
}

#[derive(Serialize)]
struct Tools {
    components: Vec<Tool>,
}

#[derive(Serialize)]
struct Tool {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Component<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "bom-ref")]
    bom_ref: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    supplier: Option<Supplier<'a>>,
    name: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hashes: Vec<Hash>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    licenses: Vec<License<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purl: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_references: Vec<ExternalReference<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    properties: Vec<Property>,
}

#[derive(Serialize)]
struct Supplier<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Hash {
    alg: &'static str,
    content: String,
}

#[derive(Serialize)]
struct License<'a> {
    expression: &'a str,
}

#[derive(Serialize)]
struct ExternalReference<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    url: &'a str,
}

#[derive(Serialize)]
struct Property {
    name: &'static str,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Dependency<'a> {
    #[serde(rename = "ref")]
    reference: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    depends_on: Vec<&'a str>,
}

pub(super) fn render(sbom: &Sbom, release: &Release) -> Vec<u8> {
    let mut image = component(&sbom.nodes[0]);
    image.properties.push(Property {
        name: "crust:root-hash",
        value: release.root_hash.to_hex(),
    });
    let components = sbom
        .nodes
        .iter()
        .skip(1)
        .map(|n| {
            let mut c = component(n);
            if n.id == super::ids::ROOT {
                c.hashes.push(Hash {
                    alg: "SHA-256",
                    content: release.root_sha256.to_hex(),
                });
            }
            c
        })
        .collect();
    let dependencies = sbom
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Dependency {
            reference: &n.id,
            // Both CONTAINS and DEPENDS_ON may join two nodes: each once, in id order.
            depends_on: sbom
                .edges
                .iter()
                .filter_map(|&(from, rel, to)| match rel {
                    Rel::Contains | Rel::DependsOn if from == i => Some(sbom.nodes[to].id.as_str()),
                    Rel::BuildDependencyOf if to == i => Some(sbom.nodes[from].id.as_str()),
                    _ => None,
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        })
        .collect();
    let bom = Bom {
        schema: "http://cyclonedx.org/schema/bom-1.5.schema.json",
        bom_format: "CycloneDX",
        spec_version: "1.5",
        serial_number: format!(
            "urn:uuid:{}",
            crate::disk::derived_uuid(&sbom.build_id, "cyclonedx serial number")
        ),
        version: 1,
        metadata: Metadata {
            timestamp: sbom.created(),
            tools: Tools {
                components: vec![Tool {
                    kind: "application",
                    name: "crust-builder",
                    version: env!("CARGO_PKG_VERSION"),
                }],
            },
            component: image,
        },
        components,
        dependencies,
    };
    let mut out = serde_json::to_vec_pretty(&bom).unwrap_or_default();
    out.push(b'\n');
    out
}

fn component(n: &Node) -> Component<'_> {
    let mut properties: Vec<Property> = n
        .properties
        .iter()
        .map(|(name, value)| Property {
            name,
            value: value.clone(),
        })
        .collect();
    if let Some(place) = &n.place {
        properties.insert(
            0,
            Property {
                name: "crust:place",
                value: place.clone(),
            },
        );
    }
    if let Some(info) = &n.source_info {
        properties.push(Property {
            name: "crust:source-info",
            value: info.clone(),
        });
    }
    let mut external_references = Vec::new();
    if let Some(url) = &n.download {
        external_references.push(ExternalReference {
            kind: "distribution",
            url,
        });
    }
    if let Some(url) = &n.homepage {
        external_references.push(ExternalReference {
            kind: "website",
            url,
        });
    }
    let build_only = n
        .properties
        .iter()
        .any(|(k, v)| *k == "crust:linked" && v != "true");
    Component {
        kind: match n.purpose {
            Purpose::OperatingSystem => "operating-system",
            Purpose::Archive => "file",
            Purpose::Firmware => "firmware",
            Purpose::Container => "container",
            Purpose::Application => "application",
            Purpose::Library => "library",
        },
        bom_ref: &n.id,
        supplier: n.supplier.as_deref().map(|name| Supplier { name }),
        name: &n.name,
        version: &n.version,
        description: n.summary.as_deref(),
        scope: build_only.then_some("excluded"),
        hashes: n
            .sha256
            .iter()
            .map(|s| Hash {
                alg: "SHA-256",
                content: s.clone(),
            })
            .collect(),
        licenses: n
            .license
            .iter()
            .map(|expression| License { expression })
            .collect(),
        purl: n.purl.as_deref(),
        external_references,
        properties,
    }
}
