//! Prometheus's text exposition format, version 0.0.4: `# HELP` and `# TYPE` lines, then
//! one line per sample, `name{label="value",…} value`.
//!
//! Families are kept in the order they were first added, each with all its samples
//! together (the format requires a family's lines to be contiguous); label values and
//! help texts are escaped as the format says.

use std::fmt::Write;

/// The `Content-Type` of a response in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that only goes up (reset when its source restarts); names end in `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<(Vec<(String, String)>, f64)>,
}

/// The metrics of one scrape.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// Adds a sample of family `name` (declared with `help` and `kind` on first use).
    pub fn add(&mut self, name: &str, help: &str, kind: Kind, labels: &[(&str, &str)], value: f64) {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match self.families.iter_mut().find(|f| f.name == name) {
            Some(family) => family.samples.push((labels, value)),
            None => self.families.push(Family {
                name: name.to_owned(),
                help: help.to_owned(),
                kind,
                samples: vec![(labels, value)],
            }),
        }
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.add(name, help, Kind::Gauge, &[], value);
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: f64) {
        self.add(name, help, Kind::Counter, &[], value);
    }

    /// The families' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.families.iter().map(|f| f.name.as_str())
    }

    /// The text of the exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.families.len() * 160);
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for (labels, value) in &f.samples {
                out.push_str(&f.name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                out.push(' ');
                out.push_str(&number(*value));
                out.push('\n');
            }
        }
        out
    }
}

/// A sample value as the format writes it: `NaN`, `+Inf`, `-Inf`, or a decimal number.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A metric or label name made valid (`[a-zA-Z_:][a-zA-Z0-9_:]*`): every other character
/// becomes `_`, as node_exporter does with `/proc/meminfo`'s `Active(anon)`.
pub fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    while out.ends_with('_') && out.len() > 1 {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_contiguous_and_escaped() {
        let mut e = Exposition::default();
        e.add(
            "crust_service_up",
            "Whether it runs.",
            Kind::Gauge,
            &[("service", "web")],
            1.0,
        );
        e.counter(
            "crust_boots_total",
            "Boots.\nOf this host \\ its disk.",
            3.0,
        );
        e.add(
            "crust_service_up",
            "ignored",
            Kind::Gauge,
            &[("service", "a\"b\\c\nd")],
            0.0,
        );
        e.gauge("x", "nan", f64::NAN);
        e.gauge("y", "inf", f64::INFINITY);
        e.gauge("z", "fraction", 0.25);
        assert_eq!(
            e.render(),
            "# HELP crust_service_up Whether it runs.\n\
             # TYPE crust_service_up gauge\n\
             crust_service_up{service=\"web\"} 1\n\
             crust_service_up{service=\"a\\\"b\\\\c\\nd\"} 0\n\
             # HELP crust_boots_total Boots.\\nOf this host \\\\ its disk.\n\
             # TYPE crust_boots_total counter\n\
             crust_boots_total 3\n\
             # HELP x nan\n# TYPE x gauge\nx NaN\n\
             # HELP y inf\n# TYPE y gauge\ny +Inf\n\
             # HELP z fraction\n# TYPE z gauge\nz 0.25\n"
        );
    }

    #[test]
    fn names_are_made_valid() {
        assert_eq!(sanitize_name("Active(anon)"), "Active_anon");
        assert_eq!(sanitize_name("HugePages_Total"), "HugePages_Total");
        assert_eq!(sanitize_name("1x-y"), "_1x_y");
    }
}
