//! UTC calendar dates from Unix time: the dates FAT directory entries, EFI signed-variable
//! timestamps, the init's clock lines and the benchmark's reports carry.
//!
//! Written here rather than taken from `chrono` or `time`: the whole need is one
//! conversion (Howard Hinnant's days-to-civil algorithm, proleptic Gregorian, no leap
//! seconds), and the static init should not link a date library for it.

use std::fmt;

/// A moment in UTC, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UtcTime {
    /// The year (negative before year 0).
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
}

impl UtcTime {
    /// The moment `secs` seconds after (or, negative, before) 1970-01-01T00:00:00Z.
    pub fn from_unix(secs: i64) -> Self {
        let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let march_month = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * march_month + 2) / 5 + 1;
        let month = if march_month < 10 {
            march_month + 3
        } else {
            march_month - 9
        };
        Self {
            year: era * 400 + year_of_era + i64::from(month <= 2),
            // In range by construction: month 1..=12, day 1..=31, the rest under 60 or 24.
            month: month as u32,
            day: day as u32,
            hour: (rest / 3600) as u32,
            minute: (rest / 60 % 60) as u32,
            second: (rest % 60) as u32,
        }
    }

    /// The compact form for file names: `20261128T225007Z`.
    pub fn compact(&self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// RFC 3339: `2026-11-28T22:50:07Z`.
impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_moments() {
        assert_eq!(UtcTime::from_unix(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            UtcTime::from_unix(1_936_785_605).to_string(),
            "2031-05-17T12:00:05Z"
        );
        // A leap day, and the last second of a century year that is not a leap year.
        assert_eq!(
            UtcTime::from_unix(951_782_400).to_string(),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            UtcTime::from_unix(4_107_542_399).to_string(),
            "2100-02-28T23:59:59Z"
        );
        assert_eq!(UtcTime::from_unix(-1).to_string(), "1969-12-31T23:59:59Z");
        assert_eq!(
            UtcTime::from_unix(1_795_906_207).compact(),
            "20261128T225007Z"
        );
    }

    #[test]
    fn every_day_follows_the_last() {
        let mut last = UtcTime::from_unix(-86_400 * 800);
        for d in -799..3_000 {
            let t = UtcTime::from_unix(d * 86_400);
            assert!(t > last, "{t} after {last}");
            assert!(
                (1..=12).contains(&t.month) && (1..=31).contains(&t.day),
                "{t}"
            );
            last = t;
        }
    }
}
