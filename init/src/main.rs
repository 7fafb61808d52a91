//! The PID 1 binary: everything is in the library (`src/lib.rs`), so that its parsers can
//! be fuzzed; this only starts it.

fn main() {
    crust_init::run()
}
