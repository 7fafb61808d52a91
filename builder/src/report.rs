//! What a build tells the person running it: cargo-style status lines, warnings, and
//! progress bars for the long steps.
//!
//! Everything goes to stderr. Bars come from `indicatif` and hide themselves when stderr is
//! not a terminal (CI logs stay clean); status lines always print.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

fn styled(code: &str, text: &str) -> String {
    if std::io::stderr().is_terminal() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Prints `   <verb> <message>` with the verb right-aligned, as cargo does.
pub fn status(verb: &str, message: impl Display) {
    let verb = styled("1;32", &format!("{verb:>12}"));
    let _ = writeln!(std::io::stderr(), "{verb} {message}");
}

/// Prints a warning line.
pub fn warn(message: impl Display) {
    let _ = writeln!(
        std::io::stderr(),
        "{}: {message}",
        styled("1;33", "warning")
    );
}

/// A spinner for a step of unknown length.
pub fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.set_style(
        ProgressStyle::with_template("{spinner:.green} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A bar counting bytes, with throughput and time left.
pub fn bytes_bar(total: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(total).with_message(message.to_owned());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:40.green/dim}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}
