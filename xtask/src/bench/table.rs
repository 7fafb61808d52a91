//! The report as text for the terminal: four sections (build, image, boot, goals), each
//! a table with aligned columns.

use std::fmt::Write as _;

use super::report::{Goal, Report};
use super::stats::Series;

/// Seconds, with more digits for short times.
pub fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{s:.3} s")
    } else {
        format!("{s:.2} s")
    }
}

/// Bytes in MiB (or GiB from 1 GiB up).
pub fn size(bytes: u64) -> String {
    let mib = bytes as f64 / f64::from(1u32 << 20);
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// Lays out `rows` in columns separated by two spaces, right-aligning the columns
/// `right` names, each line indented by `indent` spaces.
fn grid(rows: &[Vec<String>], right: &[usize], indent: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = " ".repeat(indent);
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c].saturating_sub(cell.chars().count());
            if right.contains(&c) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn runs(series: &Series) -> String {
    series
        .runs
        .iter()
        .map(|r| format!("{r:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn series_row(name: &str, series: Option<&Series>) -> Option<Vec<String>> {
    series.map(|s| vec![name.to_owned(), seconds(s.median), runs(s)])
}

fn goal_value(goal: &Goal) -> String {
    match (goal.value, goal.unit.as_str()) {
        (None, _) => "not measured".into(),
        (Some(v), "s") => seconds(v),
        (Some(v), "x floor") => format!("{v:.2} x floor"),
        (Some(v), unit) => format!("{v:.1} {unit}"),
    }
}

/// The whole report as text.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Crust bench: profile {}, {} iteration{}{}, started {}",
        r.profile,
        r.iterations,
        if r.iterations == 1 { "" } else { "s" },
        if r.quick { " (--quick)" } else { "" },
        r.started_at
    );
    let _ = writeln!(
        out,
        "machine: {} CPUs ({}), load average {:.2} at the start, {:.2} at the end",
        r.machine.cpus, r.machine.cpu, r.machine.load_before, r.machine.load_after
    );

    let b = &r.build;
    let mut rows = vec![vec!["BUILD".into(), "median".into(), "runs (s)".into()]];
    rows.extend(
        [
            series_row("cold (empty caches)", b.cold.as_ref()),
            series_row("  of which downloads", b.cold_download.as_ref()),
            series_row("warm (packages cached)", b.warm.as_ref()),
            series_row("unchanged (builder)", b.unchanged.as_ref()),
            series_row(
                "unchanged (cargo xtask build)",
                b.unchanged_command.as_ref(),
            ),
        ]
        .into_iter()
        .flatten(),
    );
    if b.cold.is_none() {
        rows.push(vec!["cold".into(), "not measured".into(), String::new()]);
    }
    out.push('\n');
    out.push_str(&grid(&rows, &[1], 0));
    if !b.warm_steps.is_empty() {
        let steps: Vec<String> = b
            .warm_steps
            .iter()
            .map(|s| format!("{} {:.2}", s.name, s.median))
            .collect();
        let _ = writeln!(out, "  warm build steps (s): {}", steps.join(", "));
    }

    let i = &r.image;
    let mut rows = vec![vec![
        "IMAGE".into(),
        String::new(),
        "stored".into(),
        "uncompressed".into(),
    ]];
    rows.push(vec![
        "image.raw allocated".into(),
        String::new(),
        size(i.allocated),
        format!("({} apparent)", size(i.apparent)),
    ]);
    rows.push(vec![
        format!("image.{} (release)", i.compressed_format),
        String::new(),
        size(i.compressed),
        format!("(made in {})", seconds(i.compress_seconds)),
    ]);
    for c in &i.components {
        rows.push(vec![
            format!("  {}", c.name),
            c.place.clone(),
            if c.stored == 0 && c.uncompressed.is_some() {
                "-".into()
            } else {
                size(c.stored)
            },
            c.uncompressed.map(size).unwrap_or_default(),
        ]);
    }
    out.push('\n');
    out.push_str(&grid(&rows, &[2, 3], 0));

    if let Some(boot) = &r.boot {
        let mut rows = vec![vec![
            format!(
                "BOOT ({}, median of {} boot{})",
                boot.accelerator,
                boot.boots,
                if boot.boots == 1 { "" } else { "s" }
            ),
            "guest clock".into(),
            "since power-on".into(),
            "x floor".into(),
        ]];
        for m in &boot.marks {
            rows.push(vec![
                format!("  {}", m.name),
                m.kernel.map(seconds).unwrap_or_else(|| "-".into()),
                m.since_power_on.map(seconds).unwrap_or_else(|| "-".into()),
                m.ratio
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        rows.push(vec![
            "  reference floor: init".into(),
            String::new(),
            seconds(boot.floor.median),
            "1.00".into(),
        ]);
        if let Some(k) = &boot.floor_kernel_start {
            rows.push(vec![
                "  reference floor: kernel start".into(),
                String::new(),
                seconds(k.median),
                format!("{:.2}", k.median / boot.floor.median),
            ]);
        }
        out.push('\n');
        out.push_str(&grid(&rows, &[1, 2, 3], 0));
        let _ = writeln!(out, "  boot chart: {}", boot.chart);
    } else {
        out.push_str("\nBOOT not measured (--no-boot)\n");
    }
    if let Some(o) = &r.observe {
        let _ = writeln!(
            out,
            "\nOBSERVABILITY ({}, {} scrapes of {:.1} KiB): exporter CPU {:.1} ms per scrape, \
             resident {}, a scrape {:.0} ms end to end",
            o.accelerator,
            o.scrapes,
            o.scrape_bytes as f64 / 1024.0,
            o.cpu_per_scrape_ms,
            size(o.exporter_resident_bytes),
            o.scrape_ms
        );
    }

    if let Some(s) = &r.sealed {
        let mut rows = vec![vec![
            format!(
                "SEALED /var ({}, median of {} boot{} each)",
                s.accelerator,
                s.boots,
                if s.boots == 1 { "" } else { "s" }
            ),
            "state phase".into(),
            "cost".into(),
        ]];
        rows.push(vec![
            "  unencrypted".into(),
            seconds(s.plain.median),
            String::new(),
        ]);
        rows.push(vec![
            "  encrypted, first boot".into(),
            seconds(s.first.median),
            format!("+{}", seconds(s.first_cost)),
        ]);
        rows.push(vec![
            "  encrypted, later boot".into(),
            seconds(s.later.median),
            format!("+{}", seconds(s.later_cost)),
        ]);
        out.push('\n');
        out.push_str(&grid(&rows, &[1, 2], 0));
        let ms = |label: &str, v: &Option<Series>| {
            v.as_ref().map(|v| format!("{label} {:.0} ms", v.median))
        };
        let first: Vec<String> = [
            ms("waiting for the kernel's generator", &s.random_wait_ms),
            ms("sealing (and checking)", &s.seal_ms),
            ms("mke2fs", &s.mkfs_ms),
        ]
        .into_iter()
        .flatten()
        .collect();
        let later: Vec<String> = [
            ms("unsealing", &s.unseal_ms),
            ms("dm-crypt", &s.dm_crypt_ms),
        ]
        .into_iter()
        .flatten()
        .collect();
        let _ = writeln!(out, "  first boot: {}", first.join(", "));
        let _ = writeln!(out, "  later boots: {}", later.join(", "));
    }

    let mut rows = vec![vec![
        "GOALS".into(),
        "measured".into(),
        "limit".into(),
        String::new(),
    ]];
    for g in &r.goals {
        rows.push(vec![
            format!("  {}", g.name),
            goal_value(g),
            format!("<= {} {}", g.limit, g.unit),
            match g.met {
                Some(true) => "met".into(),
                Some(false) => "NOT MET".into(),
                None => "-".into(),
            },
        ]);
    }
    out.push('\n');
    out.push_str(&grid(&rows, &[1], 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::sample;

    #[test]
    fn every_section_shows_its_figures() {
        let text = render(&sample());
        for want in [
            "profile qemu, 3 iterations",
            "cold (empty caches)",
            "41.00 s",
            "8.50 s",
            "0.050 s",
            "warm build steps (s): rootfs 3.25, release 0.50",
            "42.0 MiB",
            "3.00 GiB apparent",
            "image.raw.zst (release)",
            "crun & <libs>",
            "BOOT (tcg, median of 3 boots)",
            "demo answering",
            "1.25",
            "reference floor: init",
            "8.00 s",
            "SEALED /var (tcg, median of 3 boots each)",
            "encrypted, later boot",
            "+0.150 s",
            "unsealing 32 ms, dm-crypt 16 ms",
            "OBSERVABILITY (tcg, 20 scrapes of 11.7 KiB): exporter CPU 30.5 ms per scrape, \
             resident 1.0 MiB, a scrape 80 ms end to end",
            "NOT MET",
        ] {
            if want == "NOT MET" {
                assert!(!text.contains(want), "all sample goals are met\n{text}");
            } else {
                assert!(text.contains(want), "{want:?} missing from\n{text}");
            }
        }
    }

    #[test]
    fn columns_line_up() {
        let text = grid(
            &[
                vec!["a".into(), "1.0 s".into()],
                vec!["longer".into(), "12.0 s".into()],
            ],
            &[1],
            2,
        );
        assert_eq!(text, "  a        1.0 s\n  longer  12.0 s\n");
    }

    #[test]
    fn missing_figures_say_so() {
        let mut r = sample();
        r.build.cold = None;
        r.build.cold_download = None;
        r.boot = None;
        r.goals = r.evaluate_goals();
        let text = render(&r);
        let line = |start: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(start))
                .unwrap_or_else(|| panic!("no line {start:?} in\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("cold"), "cold not measured");
        assert_eq!(line("BOOT"), "BOOT not measured (--no-boot)");
        assert_eq!(
            line("boot to demo answering"),
            "boot to demo answering not measured <= 1.3 x floor -"
        );
    }
}
