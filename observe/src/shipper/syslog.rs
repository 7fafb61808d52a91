//! Syslog messages as RFC 5424 has them, and their framing on the wire: octet counting
//! over TCP and TLS (RFC 6587 §3.4.1, RFC 5425 §4.3), one message per datagram over UDP
//! (RFC 5426).
//!
//! ```text
//! <30>1 2026-12-04T07:30:00.123456Z web-1 web - [crust@32473 boot-id="…"] GET / 200
//! ```
//!
//! PROCID is always `-`; the boot id (`/proc/sys/kernel/random/boot_id`) is structured
//! data under the SD-ID `crust@32473` (32473 is IANA's example enterprise number, RFC 5612:
//! Crust has none of its own). MSG is UTF-8 without a byte order mark.

use crust_format::observe::{Record, header_field};
use crust_format::utc::UtcTime;

/// The structured data element's ID.
pub const SD_ID: &str = "crust@32473";
/// The largest UDP message sent (RFC 5426 §3.2: receivers should take 2048 octets).
pub const MAX_DATAGRAM: usize = 2048;

/// `2026-12-04T07:30:00.123456Z` for Unix time in microseconds.
pub fn timestamp(unix_us: i64) -> String {
    let t = UtcTime::from_unix(unix_us.div_euclid(1_000_000));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        unix_us.rem_euclid(1_000_000)
    )
}

/// A PARAM-VALUE with `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn param_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The RFC 5424 message for a record made at `unix_us`, sent by `hostname` in boot
/// `boot_id`.
pub fn message(record: &Record, unix_us: i64, hostname: &str, boot_id: &str) -> String {
    format!(
        "<{}>1 {} {} {} - {} [{SD_ID} boot-id=\"{}\"] {}",
        (record.facility as u8) * 8 + record.severity as u8,
        timestamp(unix_us),
        header_field(hostname, 255),
        header_field(&record.app, 48),
        header_field(&record.msgid, 32),
        param_value(boot_id),
        record.msg
    )
}

/// `<length> <message>`: octet-counted framing for TCP and TLS.
pub fn octet_counted(message: &str) -> Vec<u8> {
    let mut frame = format!("{} ", message.len()).into_bytes();
    frame.extend_from_slice(message.as_bytes());
    frame
}

/// The message cut to [`MAX_DATAGRAM`] bytes at a character boundary, for UDP.
pub fn datagram(message: &str) -> &str {
    if message.len() <= MAX_DATAGRAM {
        return message;
    }
    let mut cut = MAX_DATAGRAM;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    &message[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_format::observe::{Facility, Severity};

    fn record(app: &str, msgid: &str, msg: &str) -> Record {
        Record {
            monotonic_us: 1,
            facility: Facility::User,
            severity: Severity::Info,
            app: app.into(),
            msgid: msgid.into(),
            msg: msg.into(),
        }
    }

    #[test]
    fn messages_follow_rfc_5424() {
        let m = message(
            &record("web", "-", "GET / 200 \"ok\""),
            1_796_373_000_123_456,
            "web-1",
            "0b6ce4c4-7d43-4f6e-9a1e-6b1c2d3e4f50",
        );
        assert_eq!(
            m,
            "<14>1 2026-12-04T08:30:00.123456Z web-1 web - - \
             [crust@32473 boot-id=\"0b6ce4c4-7d43-4f6e-9a1e-6b1c2d3e4f50\"] GET / 200 \"ok\""
        );
        let r = Record {
            facility: Facility::Daemon,
            severity: Severity::Warning,
            ..record("crust", "warning", "x")
        };
        let m = message(&r, 0, "", "a]\"b\\");
        assert!(
            m.starts_with("<28>1 1970-01-01T00:00:00.000000Z - crust - warning"),
            "{m}"
        );
        assert!(m.contains(r#"boot-id="a\]\"b\\""#), "{m}");
    }

    #[test]
    fn octet_counting_counts_bytes_not_characters() {
        let frames = [octet_counted("<14>1 - - - - - - é"), octet_counted("two")];
        let wire: Vec<u8> = frames.concat();
        // Read back as a receiver does: length, space, that many octets.
        let mut rest = &wire[..];
        let mut got = Vec::new();
        while !rest.is_empty() {
            let space = rest.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rest[..space])
                .unwrap()
                .parse()
                .unwrap();
            got.push(String::from_utf8(rest[space + 1..space + 1 + len].to_vec()).unwrap());
            rest = &rest[space + 1 + len..];
        }
        assert_eq!(got, ["<14>1 - - - - - - é", "two"]);
        assert!(wire.starts_with(b"20 <14>"));
    }

    #[test]
    fn datagrams_are_cut_at_a_character() {
        let long = "é".repeat(MAX_DATAGRAM);
        let d = datagram(&long);
        assert!(d.len() <= MAX_DATAGRAM && d.len() >= MAX_DATAGRAM - 1);
        assert_eq!(datagram("short"), "short");
    }
}
