//! UTC calendar days for stats periods, without a date-time dependency:
//! days since 1970-01-01 to and from (year, month, day), by Howard Hinnant's
//! `civil_from_days` / `days_from_civil` algorithms.

use crate::config::DAY_MS;

/// Days since the Unix epoch of a Unix-ms instant.
pub fn day_of(at_ms: u64) -> i64 {
    (at_ms / DAY_MS) as i64
}

/// (year, month 1–12, day 1–31) of a day number.
pub fn civil(day: i64) -> (i64, u32, u32) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day number of (year, month, day), if it is a real date.
pub fn day_number(year: i64, month: u32, day: u32) -> Option<i64> {
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days_in_month {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// `YYYY-MM-DD` as a day number.
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let year = parts.next().filter(|p| p.len() == 4)?.parse().ok()?;
    let month = parts.next().filter(|p| p.len() == 2)?.parse().ok()?;
    let day = parts.next().filter(|p| p.len() == 2)?.parse().ok()?;
    day_number(year, month, day)
}

/// A day number as `YYYY-MM-DD`.
pub fn format_date(day: i64) -> String {
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The first day of the month `day` is in.
pub fn month_start(day: i64) -> i64 {
    let (y, m, _) = civil(day);
    day_number(y, m, 1).unwrap_or(day)
}

/// A Unix-ms instant as `YYYY-MM-DDTHH:MM:SSZ`, for CSV exports.
pub fn format_instant(at_ms: u64) -> String {
    let seconds = (at_ms % DAY_MS) / 1_000;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        format_date(day_of(at_ms)),
        seconds / 3_600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_convert_both_ways() {
        assert_eq!(day_number(1970, 1, 1), Some(0));
        assert_eq!(day_number(2000, 3, 1), Some(11_017));
        assert_eq!(format_date(20_415), "2025-11-23");
        assert_eq!(format_instant(1_763_900_000_123), "2025-11-23T12:13:20Z");
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2024-13-01"), None);
        assert_eq!(parse_date("24-01-01"), None);
        assert_eq!(
            month_start(parse_date("2026-11-23").unwrap()),
            parse_date("2026-11-01").unwrap()
        );
        for day in -800_000..800_000 {
            if day % 997 == 0 {
                let (y, m, d) = civil(day);
                assert_eq!(day_number(y, m, d), Some(day));
            }
        }
    }
}
