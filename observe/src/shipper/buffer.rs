//! The shipper's bounded buffer: messages wait here, oldest first, while the collector is
//! away; what does not fit is dropped and counted, and the count itself becomes a message
//! in the place where the dropped ones would have been, once there is room again.
//!
//! Messages written to a TCP or TLS connection stay here too (`recent`) until the collector's
//! kernel has acknowledged their bytes: plain syslog over TCP has no acknowledgements of
//! its own, and a collector that goes away loses what was in flight. When the connection
//! ends with a FIN, the collector read everything that reached it, so only what was still
//! unacknowledged then is sent again; after a reset (a collector that closed with unread
//! data) or a failed write, every record still here is. A record near a reset may arrive
//! twice; none arrives out of order.

use std::collections::VecDeque;

use crust_format::observe::{Facility, Record, Severity};
/// What a message is counted as beyond its text (timestamp, host, names, structured data).
pub const OVERHEAD: usize = 160;

/// The buffer.
#[derive(Debug)]
pub struct Buffer {
    queue: VecDeque<Record>,
    /// Written, not known to be acknowledged: each with its bytes on the wire.
    recent: VecDeque<(usize, Record)>,
    /// The wire bytes of `recent`.
    recent_wire: usize,
    bytes: usize,
    limit: usize,
    /// Dropped since the last count was queued.
    dropped: u64,
    /// Dropped in all.
    dropped_total: u64,
    /// The count most recently queued, until the shipper says it.
    noted: Option<u64>,
}

/// The bytes a record is counted as.
pub fn cost(r: &Record) -> usize {
    r.msg.len() + r.app.len() + r.msgid.len() + OVERHEAD
}

impl Buffer {
    /// A buffer of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            recent: VecDeque::new(),
            recent_wire: 0,
            bytes: 0,
            limit,
            dropped: 0,
            dropped_total: 0,
            noted: None,
        }
    }

    /// Makes room for `need` bytes by letting go of recently sent records, oldest first (a
    /// resend is worth less than a line not sent yet).
    fn make_room(&mut self, need: usize) {
        while self.bytes + need > self.limit {
            if !self.forget_oldest_recent() {
                return;
            }
        }
    }

    fn forget_oldest_recent(&mut self) -> bool {
        let Some((wire, r)) = self.recent.pop_front() else {
            return false;
        };
        self.recent_wire -= wire;
        self.bytes -= cost(&r);
        true
    }

    /// Queues a record; false if it did not fit (it is counted).
    pub fn push(&mut self, record: Record) -> bool {
        self.note_drops(record.monotonic_us);
        self.make_room(cost(&record));
        if self.dropped > 0 || self.bytes + cost(&record) > self.limit {
            self.dropped += 1;
            self.dropped_total += 1;
            return false;
        }
        self.bytes += cost(&record);
        self.queue.push_back(record);
        true
    }

    /// Queues the count of dropped records if there is room for it now; returns the count
    /// queued.
    pub fn note_drops(&mut self, monotonic_us: u64) -> Option<u64> {
        if self.dropped == 0 {
            return None;
        }
        let n = self.dropped;
        let note = Record {
            monotonic_us,
            facility: Facility::Daemon,
            severity: Severity::Warning,
            app: "crust".into(),
            msgid: "logs".into(),
            msg: format!(
                "logs: {n} lines did not fit in the {}-byte buffer while the collector was \
                 unreachable and were dropped",
                self.limit
            ),
        };
        self.make_room(cost(&note));
        if self.bytes + cost(&note) > self.limit {
            return None;
        }
        self.dropped = 0;
        self.bytes += cost(&note);
        self.queue.push_back(note);
        self.noted = Some(n);
        Some(n)
    }

    /// The count of dropped records queued since the last call, if one was.
    pub fn take_noted(&mut self) -> Option<u64> {
        self.noted.take()
    }

    /// The next record to send.
    pub fn next(&self) -> Option<&Record> {
        self.queue.front()
    }

    /// The next record was written, `wire` bytes of it on a connection that may lose it
    /// (TCP, TLS: kept until acknowledged), `None` where a resend could not know better
    /// (UDP: let go).
    pub fn sent(&mut self, wire: Option<usize>) {
        if let Some(r) = self.queue.pop_front() {
            match wire {
                Some(wire) => {
                    self.recent_wire += wire;
                    self.recent.push_back((wire, r));
                }
                None => self.bytes -= cost(&r),
            }
        }
    }

    /// The collector's kernel has acknowledged all but the last `unacked` bytes written:
    /// records wholly before those are let go.
    pub fn acked(&mut self, unacked: usize) {
        while let Some((wire, _)) = self.recent.front() {
            if self.recent_wire - wire < unacked {
                return;
            }
            self.forget_oldest_recent();
        }
    }

    /// The connection ended: the records that may not have reached the collector (those
    /// within the last `unacked` bytes when it is known, else all still held) go back to
    /// the front, in order; returns how many.
    pub fn resend_recent(&mut self, unacked: Option<usize>) -> usize {
        if let Some(u) = unacked {
            self.acked(u);
        }
        let n = self.recent.len();
        while let Some((_, r)) = self.recent.pop_back() {
            self.queue.push_front(r);
        }
        self.recent_wire = 0;
        n
    }

    /// Records waiting to be sent.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes held (waiting and recently sent).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes it may hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Records dropped in all.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Record {
        Record {
            monotonic_us: i,
            facility: Facility::User,
            severity: Severity::Info,
            app: "ticker".into(),
            msgid: "-".into(),
            msg: format!("tick {i}"),
        }
    }

    fn drain(b: &mut Buffer) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(r) = b.next() {
            out.push(r.msg.clone());
            b.sent(None);
        }
        out
    }

    #[test]
    fn what_does_not_fit_is_counted_in_its_place() {
        let one = cost(&rec(1));
        let mut b = Buffer::new(one * 3);
        for i in 1..=5 {
            b.push(rec(i));
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.dropped_total(), 2);
        // Room again: the count comes before anything newer.
        assert_eq!(drain(&mut b), ["tick 1", "tick 2", "tick 3"]);
        b.push(rec(6));
        let got = drain(&mut b);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("logs: 2 lines did not fit in the"),
            "{got:?}"
        );
        assert_eq!(got[1], "tick 6");
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn recently_sent_records_make_room_for_new_ones() {
        let one = cost(&rec(10));
        let mut b = Buffer::new(one * 3);
        for i in 1..=10 {
            assert!(b.push(rec(i)), "tick {i}");
            b.sent(Some(100));
        }
        assert_eq!(b.dropped_total(), 0);
        assert_eq!(
            b.resend_recent(None),
            3,
            "the last three are kept for a resend"
        );
        assert_eq!(drain(&mut b), ["tick 8", "tick 9", "tick 10"]);
    }

    #[test]
    fn only_what_was_not_acknowledged_is_sent_again() {
        let mut b = Buffer::new(1 << 20);
        for i in 1..=5 {
            b.push(rec(i));
        }
        for _ in 1..=4 {
            b.sent(Some(100));
        }
        // All but the last 150 bytes acknowledged: ticks 1 and 2 are let go.
        b.acked(150);
        // At the FIN, 80 bytes were still unacknowledged: tick 4 alone goes again.
        assert_eq!(b.resend_recent(Some(80)), 1);
        assert_eq!(drain(&mut b), ["tick 4", "tick 5"]);
        assert_eq!(b.bytes(), 0);
        // A clean close with nothing in flight sends nothing twice.
        b.push(rec(6));
        b.sent(Some(100));
        assert_eq!(b.resend_recent(Some(0)), 0);
        assert!(b.is_empty() && b.bytes() == 0);
    }
}
