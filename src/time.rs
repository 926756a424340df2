//! Time helpers: civil hours for partition paths (no calendar dependency), the one
//! parser of the date-times that query parameters and vendor bodies carry, and the one
//! rule for a span's duration.

/// An RFC 3339 datetime (or a date) → ns since the epoch.
pub fn parse_datetime(s: &str) -> Option<i64> {
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        return dt.timestamp_nanos_opt();
    }
    let naive = chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })?;
    naive.and_utc().timestamp_nanos_opt()
}

/// The duration of a span that ended at or after it started; `None` for one that has not
/// ended, ends before it starts, or lasts longer than `i64` nanoseconds can say.
pub fn duration_ns(start_ns: i64, end_ns: Option<i64>) -> Option<i64> {
    end_ns?.checked_sub(start_ns).filter(|d| *d >= 0)
}

/// Nanoseconds in one hour.
pub const NANOS_PER_HOUR: i64 = 3_600_000_000_000;

/// The UTC hour (hours since the Unix epoch, floor) that a nanosecond timestamp falls in.
pub fn hour_bucket(ts_ns: i64) -> i64 {
    ts_ns.div_euclid(NANOS_PER_HOUR)
}

/// `(year, month, day, hour)` of an hour bucket, proleptic Gregorian, UTC.
pub fn civil_hour(bucket: i64) -> (i64, u32, u32, u32) {
    let days = bucket.div_euclid(24);
    let hour = bucket.rem_euclid(24) as u32;
    let (y, m, d) = civil_from_days(days);
    (y, m, d, hour)
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The hour bucket of a partition (`date=YYYY-MM-DD`, `hour=HH`), if both parse.
pub fn hour_of_partition(date: &str, hour: &str) -> Option<i64> {
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    let h: i64 = hour.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(0..24).contains(&h) {
        return None;
    }
    Some(days_from_civil(y, m, d) * 24 + h)
}

/// Howard Hinnant's `days_from_civil`: (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #[test]
    fn partitions_round_trip() {
        for bucket in [-100_000i64, -1, 0, 1, 431_302, 500_000, 2_000_000] {
            let (y, m, d, h) = civil_hour(bucket);
            let date = format!("{y:04}-{m:02}-{d:02}");
            assert_eq!(
                hour_of_partition(&date, &format!("{h:02}")),
                Some(bucket),
                "{date} {h}"
            );
        }
        assert_eq!(hour_of_partition("2024-13-01", "00"), None);
        assert_eq!(hour_of_partition("x", "00"), None);
    }

    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil_hour(0), (1970, 1, 1, 0));
        // 2018-12-13T05:00:00Z = 1544677200 s
        assert_eq!(
            civil_hour(hour_bucket(1_544_677_200 * 1_000_000_000)),
            (2018, 12, 13, 5)
        );
        // 2024-02-29T23:59:59Z
        assert_eq!(
            civil_hour(hour_bucket(1_709_251_199 * 1_000_000_000)),
            (2024, 2, 29, 23)
        );
        // one nanosecond before the epoch
        assert_eq!(civil_hour(hour_bucket(-1)), (1969, 12, 31, 23));
    }
}
