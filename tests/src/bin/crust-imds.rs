//! The per-connection handler of the IMDS emulator for the end-to-end tests: QEMU's
//! `guestfwd=…-cmd:` runs it for every connection the guest opens to 169.254.169.254:80,
//! with the connection on standard input and output. Its one argument is the emulator's
//! state folder (`crust_vm::imds`). Nothing may go to standard error: QEMU connects that
//! to the guest's socket too.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        return ExitCode::FAILURE;
    };
    let emulator = crust_vm::imds::Emulator::open(std::path::Path::new(&dir));
    match emulator.serve(std::io::stdin().lock(), std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
