//! Kernel messages from `/dev/kmsg`: each `read` returns one record,
//! `<priority>,<sequence>,<microseconds>,<flags>[,…];<message>` and continuation lines
//! (` KEY=value`) that are left out here.

use crust_format::observe::{Facility, Record, Severity};

/// A kernel record: its sequence number and the message as a [`Record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRecord {
    /// The kernel's sequence number (consecutive; a gap means records were overwritten).
    pub sequence: u64,
    /// The message.
    pub record: Record,
}

/// Parses one record read from `/dev/kmsg`.
pub fn parse(raw: &[u8]) -> Option<KernelRecord> {
    let text = String::from_utf8_lossy(raw);
    let (prefix, rest) = text.split_once(';')?;
    let mut fields = prefix.split(',');
    let priority: u32 = fields.next()?.parse().ok()?;
    let sequence: u64 = fields.next()?.parse().ok()?;
    let monotonic_us: u64 = fields.next()?.parse().ok()?;
    let msg = rest.lines().next().unwrap_or("").to_owned();
    // Facility 0 is the kernel's; programs writing to /dev/kmsg default to user (1).
    let facility = match priority >> 3 {
        0 => Facility::Kernel,
        3 => Facility::Daemon,
        _ => Facility::User,
    };
    let app = if facility == Facility::Kernel {
        "kernel"
    } else {
        "kmsg"
    };
    Some(KernelRecord {
        sequence,
        record: Record {
            monotonic_us,
            facility,
            severity: Severity::from_code((priority & 7) as u8),
            app: app.into(),
            msgid: "-".into(),
            msg,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse() {
        let k =
            parse(b"6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n").unwrap();
        assert_eq!(k.sequence, 339);
        assert_eq!(k.record.monotonic_us, 5_140_900);
        assert_eq!(k.record.facility, Facility::Kernel);
        assert_eq!(k.record.severity, Severity::Info);
        assert_eq!(k.record.app, "kernel");
        assert_eq!(k.record.msg, "NET: Registered protocol family 10");
        let user = parse(b"12,1,2,-,caller=T1;hello").unwrap();
        assert_eq!(
            (
                user.record.facility,
                user.record.severity,
                user.record.app.as_str()
            ),
            (Facility::User, Severity::Warning, "kmsg")
        );
        assert_eq!(parse(b"garbage"), None);
    }
}
