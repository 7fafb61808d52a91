//! The boot chart: one boot as an SVG timeline, in the manner of `systemd-analyze plot`.
//!
//! Time runs left to right in seconds since power-on (QEMU started). One row per stretch
//! of the boot: the firmware, systemd-boot loading the UKI, the stub and the kernel's
//! decompression, the kernel up to the init, then each phase of the init from the end of
//! the one before; one row per service from its start to its last event, with a tick at
//! each line it printed; and the moment the host first got the demo page. Dashed lines
//! mark the reference floor and the goal (a multiple of it). Hovering over a bar shows its
//! exact times. The SVG is written by hand: a few element kinds, no dependency.

use std::fmt::Write as _;

use crust_format::phase::Phase;

use super::timeline::{Timeline, boot_phases};

/// What to draw.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// The heading.
    pub title: String,
    /// The boot.
    pub timeline: &'a Timeline,
    /// Host seconds at which the demo service first answered.
    pub answered: Option<f64>,
    /// Host seconds at which the reference floor's init ran (its median).
    pub floor: Option<f64>,
    /// The goal as a multiple of the floor (1.3).
    pub goal_ratio: f64,
}

const WIDTH: f64 = 1100.0;
const LABELS: f64 = 250.0;
const RIGHT: f64 = 90.0;
const TOP: f64 = 64.0;
const ROW: f64 = 22.0;
const BAR: f64 = 14.0;

/// A bar of the chart.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    label: String,
    start: f64,
    end: f64,
    class: &'static str,
    /// Host seconds of events drawn as ticks on the bar, with their text.
    ticks: Vec<(f64, String)>,
}

/// Escapes text for XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn stage(phase: Phase) -> &'static str {
    if phase <= Phase::SwitchRoot {
        "stage1"
    } else {
        "stage2"
    }
}

/// The rows of a boot, in time order.
fn rows(chart: &Chart<'_>) -> Vec<Row> {
    let t = chart.timeline;
    let mut rows = Vec::new();
    let mut push = |label: String, start: Option<f64>, end: Option<f64>, class| {
        if let (Some(start), Some(end)) = (start, end)
            && end >= start
        {
            rows.push(Row {
                label,
                start,
                end,
                class,
                ticks: Vec::new(),
            });
        }
    };
    let firmware_end = t.loader.or(t.stub).or(t.kernel_start);
    push("firmware (OVMF)".into(), Some(0.0), firmware_end, "fw");
    push(
        "systemd-boot, UKI read".into(),
        t.loader,
        t.stub.or(t.kernel_start),
        "fw",
    );
    push(
        "EFI stub, kernel decompression".into(),
        t.stub,
        t.kernel_start,
        "fw",
    );
    let mut previous = t.kernel_start;
    let mut previous_label = "kernel".to_owned();
    for phase in boot_phases() {
        let Some(at) = t.phase(phase).and_then(|p| t.on_host(p)) else {
            continue;
        };
        let (label, class) = if phase == Phase::Init {
            (format!("{previous_label} (to the init)"), "kernel")
        } else {
            (phase.as_str().to_owned(), stage(phase))
        };
        push(label, previous, Some(at), class);
        previous = Some(at);
        previous_label = phase.as_str().to_owned();
    }
    let launched = t.phase(Phase::Services).and_then(|p| t.on_host(p));
    let mut names: Vec<&str> = Vec::new();
    for e in &t.services {
        if !names.contains(&e.service.as_str()) {
            names.push(&e.service);
        }
    }
    for name in names {
        let ticks: Vec<(f64, String)> = t
            .services
            .iter()
            .filter(|e| e.service == name)
            .filter_map(|e| Some((t.on_host(e.at)?, e.text.clone())))
            .collect();
        let (Some(first), Some(last)) = (ticks.first(), ticks.last()) else {
            continue;
        };
        rows.push(Row {
            label: format!("service {name}"),
            start: launched.unwrap_or(first.0).min(first.0),
            end: last.0,
            class: "svc",
            ticks,
        });
    }
    if let Some(at) = chart.answered {
        rows.push(Row {
            label: "demo answering (host)".into(),
            start: launched.unwrap_or(at).min(at),
            end: at,
            class: "host",
            ticks: vec![(at, "the host got the demo page".into())],
        });
    }
    rows
}

/// Distance between axis ticks for a time span.
fn tick_step(span: f64) -> f64 {
    [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0]
        .into_iter()
        .find(|step| span / step <= 25.0)
        .unwrap_or(120.0)
}

/// Renders the chart.
pub fn render(chart: &Chart<'_>) -> String {
    let rows = rows(chart);
    let goal = chart.floor.map(|f| f * chart.goal_ratio);
    let span = rows
        .iter()
        .map(|r| r.end)
        .chain(goal)
        .chain(chart.floor)
        .fold(1.0_f64, f64::max)
        * 1.04;
    let plot = WIDTH - LABELS - RIGHT;
    let x = |t: f64| LABELS + t / span * plot;
    let height = TOP + rows.len() as f64 * ROW + 56.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    svg.push_str(
        "<style>\
         .fw{fill:#adb5bd}.kernel{fill:#4c6ef5}.stage1{fill:#37b24d}.stage2{fill:#f08c00}\
         .svc{fill:#ae3ec9}.host{fill:#e03131}.grid{stroke:#e9ecef}.tick{stroke:#fff;stroke-width:2}\
         .floor{stroke:#495057;stroke-dasharray:5,4}.goal{stroke:#e03131;stroke-dasharray:5,4}\
         .label{fill:#212529}.note{fill:#495057;font-size:11px}\
         </style>\n",
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(&chart.title)
    );
    // Axis: a grid line and a label every step.
    let step = tick_step(span);
    let bottom = TOP + rows.len() as f64 * ROW;
    let mut t = 0.0;
    while t <= span {
        let _ = writeln!(
            svg,
            r#"<line class="grid" x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}"/><text class="note" x="{x:.1}" y="{label:.1}" text-anchor="middle">{t} s</text>"#,
            x = x(t),
            top = TOP - 6.0,
            label = TOP - 10.0,
        );
        t += step;
    }
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + i as f64 * ROW;
        let (x0, x1) = (x(row.start), x(row.end));
        let _ = writeln!(
            svg,
            r#"<text class="label" x="{lx:.1}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
            lx = LABELS - 8.0,
            ty = y + BAR - 2.0,
            label = escape(&row.label),
        );
        let _ = writeln!(
            svg,
            r#"<rect class="{class}" x="{x0:.1}" y="{y:.1}" width="{w:.1}" height="{BAR}"><title>{title}</title></rect>"#,
            class = row.class,
            w = (x1 - x0).max(1.5),
            title = escape(&format!(
                "{}: {:.3} s to {:.3} s ({:.3} s)",
                row.label,
                row.start,
                row.end,
                row.end - row.start
            )),
        );
        for (at, text) in &row.ticks {
            let _ = writeln!(
                svg,
                r#"<line class="tick" x1="{tx:.1}" y1="{y:.1}" x2="{tx:.1}" y2="{y2:.1}"><title>{title}</title></line>"#,
                tx = x(*at),
                y2 = y + BAR,
                title = escape(&format!("{at:.3} s: {text}")),
            );
        }
        let _ = writeln!(
            svg,
            r#"<text class="note" x="{nx:.1}" y="{ty:.1}">{d:.2} s</text>"#,
            nx = x1.max(x0 + 1.5) + 4.0,
            ty = y + BAR - 2.0,
            d = row.end - row.start,
        );
    }
    for (value, class, text) in [
        (chart.floor, "floor", "floor".to_owned()),
        (goal, "goal", format!("goal {} x floor", chart.goal_ratio)),
    ] {
        if let Some(at) = value {
            let _ = writeln!(
                svg,
                r#"<line class="{class}" x1="{lx:.1}" y1="{top:.1}" x2="{lx:.1}" y2="{bottom:.1}"/><text class="note" x="{lx:.1}" y="{ty:.1}" text-anchor="middle">{text} {at:.2} s</text>"#,
                lx = x(at),
                top = TOP - 6.0,
                ty = bottom + 16.0,
                text = escape(&text),
            );
        }
    }
    let legend = [
        ("fw", "firmware and boot loader"),
        ("kernel", "kernel"),
        ("stage1", "init, stage 1 (initramfs)"),
        ("stage2", "init, stage 2 (verified root)"),
        ("svc", "services"),
        ("host", "seen from the host"),
    ];
    let mut lx = LABELS;
    let ly = bottom + 32.0;
    for (class, text) in legend {
        let _ = writeln!(
            svg,
            r#"<rect class="{class}" x="{lx:.1}" y="{ry:.1}" width="10" height="10"/><text class="note" x="{tx:.1}" y="{ly:.1}">{text}</text>"#,
            ry = ly - 9.0,
            tx = lx + 14.0,
        );
        lx += 20.0 + text.len() as f64 * 6.0;
    }
    svg.push_str("</svg>\n");
    svg
}

/// Checks that `svg` is well-formed enough to display: one `<svg>` root, every element
/// closed in order, no stray `&` or `<` in text. (Not a full XML parser: the charts this
/// module writes need no more.)
pub fn check_well_formed(svg: &str) -> Result<(), String> {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = svg;
    let mut roots = 0;
    while let Some(open) = rest.find('<') {
        check_text(&rest[..open])?;
        let close = rest[open..]
            .find('>')
            .map(|i| i + open)
            .ok_or("a tag is not closed")?;
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(open) if open == name.trim() => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            continue;
        }
        let name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        if name.is_empty() {
            return Err(format!("empty tag <{tag}>"));
        }
        if stack.is_empty() {
            roots += 1;
            if name != "svg" {
                return Err(format!("root element <{name}>, not <svg>"));
            }
        }
        if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    check_text(rest)?;
    match (stack.is_empty(), roots) {
        (true, 1) => Ok(()),
        (false, _) => Err(format!("unclosed elements {stack:?}")),
        (true, n) => Err(format!("{n} root elements")),
    }
}

fn check_text(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        let entity = &rest[amp..];
        let ok = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
            .iter()
            .any(|e| entity.starts_with(e));
        if !ok {
            return Err(format!("stray & in {text:?}"));
        }
        rest = &rest[amp + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::timeline::{ServiceEvent, TimedLine};

    fn boot() -> Timeline {
        let lines: Vec<TimedLine> = [
            (2.0, "BdsDxe: starting Boot0001"),
            (3.0, "EFI stub: Loaded initrd"),
            (6.5, "[    1.000000] crust: init: crust-init"),
            (6.8, "[    1.250000] crust: modules: 28 loaded"),
            (7.0, "[    1.500000] crust: root: squashfs"),
            (7.4, "[    1.800000] crust: stage2: crust-init"),
            (8.8, "[    3.200000] crust: services: started web"),
            (8.9, "[    3.300000] crust: ready: up"),
            (9.1, "[    3.500000] web: serving http://crust:80/ <&>"),
            (9.3, "[    3.700000] web: health check http:80/ passes"),
            (9.4, "[    3.710000] crust: healthy: all pass"),
        ]
        .iter()
        .map(|(at, text)| TimedLine {
            at: *at,
            text: (*text).to_owned(),
        })
        .collect();
        Timeline::read(&lines, &["web".to_owned()])
    }

    #[test]
    fn a_boot_becomes_rows_from_firmware_to_the_demo() {
        let t = boot();
        let chart = Chart {
            title: "t".into(),
            timeline: &t,
            answered: Some(9.2),
            floor: Some(7.0),
            goal_ratio: 1.3,
        };
        let rows = rows(&chart);
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "firmware (OVMF)",
                "systemd-boot, UKI read",
                "EFI stub, kernel decompression",
                "kernel (to the init)",
                "modules",
                "root",
                "stage2",
                "services",
                "ready",
                "healthy",
                "service web",
                "demo answering (host)",
            ]
        );
        // Kernel start is 5.5 s on the host: each phase ends at its stamp + 5.5.
        assert_eq!((rows[3].start, rows[3].end), (5.5, 6.5));
        assert_eq!((rows[4].start, rows[4].end), (6.5, 6.75));
        assert_eq!(rows[10].ticks.len(), 2);
        assert_eq!((rows[10].start, rows[10].end), (8.7, 9.2));
        assert_eq!(rows[11].end, 9.2);
    }

    #[test]
    fn the_svg_is_well_formed_and_escapes_text() {
        let t = boot();
        let svg = render(&Chart {
            title: "Crust <qemu> & floor".into(),
            timeline: &t,
            answered: Some(9.2),
            floor: Some(7.0),
            goal_ratio: 1.3,
        });
        check_well_formed(&svg).unwrap();
        assert!(svg.contains("Crust &lt;qemu&gt; &amp; floor"));
        assert!(svg.contains("serving http://crust:80/ &lt;&amp;&gt;"));
        assert!(svg.contains("goal 1.3 x floor 9.10 s"));
        assert!(svg.contains(r#"class="floor""#));
        // A boot without firmware lines or services still draws what it has.
        let bare = Timeline {
            kernel_start: Some(1.0),
            phases: vec![(Phase::Init, 0.5)],
            services: vec![ServiceEvent {
                service: "x".into(),
                at: 0.7,
                text: "hi".into(),
            }],
            ..Timeline::default()
        };
        let svg = render(&Chart {
            title: "bare".into(),
            timeline: &bare,
            answered: None,
            floor: None,
            goal_ratio: 1.3,
        });
        check_well_formed(&svg).unwrap();
        assert!(svg.contains("service x"));
    }

    #[test]
    fn the_checker_refuses_broken_markup() {
        assert!(check_well_formed("<svg><g></svg>").is_err());
        assert!(check_well_formed("<svg>a & b</svg>").is_err());
        assert!(check_well_formed("<svg/><svg/>").is_err());
        assert!(check_well_formed("<g/>").is_err());
        assert!(check_well_formed("<svg><rect/><text>a &amp; b</text></svg>").is_ok());
    }

    #[test]
    fn ticks_stay_readable() {
        assert_eq!(tick_step(8.0), 0.5);
        assert_eq!(tick_step(14.0), 1.0);
        assert_eq!(tick_step(40.0), 2.0);
        assert_eq!(tick_step(3000.0), 120.0);
    }
}
