//! The shipper's bounded buffer: messages wait here, oldest first, while the collector is
//! away; what does not fit is dropped and counted, and the count itself becomes a message
//! in the place where the dropped ones would have been, once there is room again.
//!
//! Messages written to a TCP or TLS connection in the last [`RESEND_WINDOW`] stay here too
//! (`recent`): plain syslog over TCP has no acknowledgements, and a collector that goes
//! away loses what was in flight. When the connection breaks they are sent again, first:
//! at least once for those, so a message near a break may arrive twice, never out of order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crust_format::observe::{Facility, Record, Severity};

/// How long a written message is kept for a resend after a broken connection.
pub const RESEND_WINDOW: Duration = Duration::from_millis(250);
/// What a message is counted as beyond its text (timestamp, host, names, structured data).
pub const OVERHEAD: usize = 160;

/// The buffer.
#[derive(Debug)]
pub struct Buffer {
    queue: VecDeque<Record>,
    recent: VecDeque<(Instant, Record)>,
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
            let Some((_, r)) = self.recent.pop_front() else {
                return;
            };
            self.bytes -= cost(&r);
        }
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

    /// The next record was sent at `now`: it is kept for [`RESEND_WINDOW`] (`keep`) or
    /// let go (UDP, where a resend cannot know better).
    pub fn sent(&mut self, now: Instant, keep: bool) {
        if let Some(r) = self.queue.pop_front() {
            if keep {
                self.recent.push_back((now, r));
            } else {
                self.bytes -= cost(&r);
            }
        }
    }

    /// Lets go of records sent before `now - RESEND_WINDOW`; returns when the next one
    /// expires.
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        while let Some((at, _)) = self.recent.front() {
            if now.saturating_duration_since(*at) < RESEND_WINDOW {
                return Some(*at + RESEND_WINDOW);
            }
            if let Some((_, r)) = self.recent.pop_front() {
                self.bytes -= cost(&r);
            }
        }
        None
    }

    /// The connection broke: the recently sent records go back to the front, in order;
    /// returns how many.
    pub fn resend_recent(&mut self) -> usize {
        let n = self.recent.len();
        while let Some((_, r)) = self.recent.pop_back() {
            self.queue.push_front(r);
        }
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
            b.sent(Instant::now(), false);
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
        let now = Instant::now();
        for i in 1..=10 {
            assert!(b.push(rec(i)), "tick {i}");
            b.sent(now, true);
        }
        assert_eq!(b.dropped_total(), 0);
        assert_eq!(b.resend_recent(), 3, "the last three are kept for a resend");
        assert_eq!(drain(&mut b), ["tick 8", "tick 9", "tick 10"]);
    }

    #[test]
    fn recent_records_are_sent_again_in_order_after_a_break() {
        let mut b = Buffer::new(1 << 20);
        for i in 1..=4 {
            b.push(rec(i));
        }
        let t0 = Instant::now();
        b.sent(t0, true);
        b.sent(t0, true);
        assert_eq!(
            b.expire(t0 + Duration::from_millis(10)),
            Some(t0 + RESEND_WINDOW)
        );
        b.sent(t0 + RESEND_WINDOW, true);
        // tick 1 and 2 are old by now; tick 3 is recent.
        b.expire(t0 + RESEND_WINDOW + Duration::from_millis(1));
        assert_eq!(b.resend_recent(), 1);
        assert_eq!(drain(&mut b), ["tick 3", "tick 4"]);
        assert_eq!(b.bytes(), 0);
    }
}
