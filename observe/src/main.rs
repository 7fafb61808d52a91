//! `crust-observe`: the init starts it as `crust-observe exporter SETTINGS` or
//! `crust-observe shipper SETTINGS [--kmsg-from-end]` (see the library's documentation).
//! Whatever it says on standard error, the init puts on the console under its mode's name;
//! a failure exits non-zero, and the init starts it again after a pause.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["exporter", settings] => crust_observe::exporter::run(Path::new(settings)),
        ["shipper", settings] => crust_observe::shipper::run(Path::new(settings), false),
        ["shipper", settings, "--kmsg-from-end"] => {
            crust_observe::shipper::run(Path::new(settings), true)
        }
        ["--version"] => {
            println!("crust-observe {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!(
                "usage: crust-observe exporter SETTINGS | crust-observe shipper SETTINGS \
                 [--kmsg-from-end]\nCrust's init runs this program; docs/OBSERVABILITY.md \
                 says what it does."
            );
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crust_observe::say(&e);
            ExitCode::FAILURE
        }
    }
}
