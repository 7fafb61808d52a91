//! Randomness for identifiers and timing (machine id, DHCP transaction ids, the jitter of
//! periodic checks): the
//! kernel's `getrandom(2)` with `GRND_INSECURE`, which never blocks.
//!
//! Early in boot, and under emulation for a second or more, the kernel's generator is not
//! yet fully seeded and a plain read blocks. Identifiers need to differ between machines,
//! not to be secret, so the boot does not wait for it; nothing in the init uses randomness
//! for keys.

use std::io;
use std::time::Duration;

/// `GRND_INSECURE` (Linux 5.6+): best-effort bytes, never blocking.
const GRND_INSECURE: nix::libc::c_uint = 0x0004;

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice; the kernel
        // writes at most that many bytes and returns how many.
        let n =
            unsafe { nix::libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), GRND_INSECURE) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

/// A random duration below `max` (whole milliseconds; zero when `max` is under one), for
/// spreading a fleet's periodic checks.
pub fn below(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    let _ = fill(&mut b);
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(u64::from_le_bytes(b) % ms.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_the_buffer_with_varying_bytes() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        fill(&mut a).unwrap();
        fill(&mut b).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
    }

    #[test]
    fn durations_stay_below_their_bound() {
        let max = Duration::from_millis(100);
        let drawn: Vec<Duration> = (0..50).map(|_| below(max)).collect();
        assert!(drawn.iter().all(|d| *d < max), "{drawn:?}");
        assert!(drawn.iter().any(|d| *d != drawn[0]), "{drawn:?}");
        assert_eq!(below(Duration::ZERO), Duration::ZERO);
    }
}
