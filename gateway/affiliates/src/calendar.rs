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
    // Digits only (`str::parse` alone would take a `+`).
    let shape_ok = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !shape_ok {
        return None;
    }
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

/// An RFC 3339 instant (`2026-11-29T16:15:54Z`, `…54.250+01:00`, a
/// lowercase `t` or `z` too) as Unix milliseconds; `None` when it is not
/// one, or is before 1970. Fractions beyond milliseconds are cut, not
/// rounded, so an instant never moves later than it was written.
pub fn parse_instant(text: &str) -> Option<u64> {
    // Two ASCII digits at `at` (`str::parse` alone would take a sign).
    let two = |at: usize| -> Option<i64> {
        let digits = text.get(at..at + 2)?;
        digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let bytes = text.as_bytes();
    if bytes.len() < 20
        || !matches!(bytes[10], b'T' | b't')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let day = parse_date(&text[..10])?;
    let (hour, minute, second) = (two(11)?, two(14)?, two(17)?);
    // No leap second (:60): nothing the platform sends needs one.
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (b, scale) in fraction.bytes().take(digits).zip([100, 10, 1]) {
            millis += i64::from(b - b'0') * scale;
        }
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (two(text.len() - 5)?, two(text.len() - 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 60 + minutes;
            if *sign == b'-' { -magnitude } else { magnitude }
        }
        _ => return None,
    };
    let seconds = day * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds.checked_mul(1_000)?.checked_add(millis)?).ok()
}

/// The same instant one calendar month later: the same day of the next
/// month and the same time of day, or the next month's last day when it is
/// shorter (31 January is followed by 28 or 29 February).
pub fn one_month_after(at_ms: u64) -> u64 {
    let (year, month, day) = civil(day_of(at_ms));
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let next = (day.min(28)..=day)
        .rev()
        .find_map(|d| day_number(year, month, d))
        .expect("every month has a 28th");
    next as u64 * DAY_MS + at_ms % DAY_MS
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
        assert_eq!(
            parse_instant("2025-11-23T12:13:20Z"),
            Some(1_763_900_000_000)
        );
        assert_eq!(
            parse_instant("2025-11-23t12:13:20.123456z"),
            Some(1_763_900_000_123)
        );
        assert_eq!(
            parse_instant("2025-11-23T13:13:20.5+01:00"),
            Some(1_763_900_000_500)
        );
        assert_eq!(
            parse_instant("2025-11-23T07:43:20-04:30"),
            Some(1_763_900_000_000)
        );
        for bad in [
            "2025-11-23",
            "2025-11-23 12:13:20Z",
            "2025-11-23T12:13:20",
            "2025-11-23T24:00:00Z",
            "2025-11-23T12:13:60Z",
            "2025-11-23T12:13:20.Z",
            "2025-11-23T12:13:20+1:00",
            "2025-11-23T12:13:20+01:00x",
            "2025-02-30T12:13:20Z",
            "1969-12-31T23:59:59Z",
            "2025-11-23T1a:13:20Z",
            "2025-+1-23T12:13:20Z",
            "2025-11-+3T12:13:20Z",
            "+025-11-23T12:13:20Z",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad}");
        }
        let at = |text: &str| parse_instant(text).unwrap();
        for (from, to) in [
            ("2026-01-15T10:00:00Z", "2026-02-15T10:00:00Z"),
            ("2026-01-31T23:59:59Z", "2026-02-28T23:59:59Z"),
            ("2028-01-31T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("2026-12-31T08:00:00Z", "2027-01-31T08:00:00Z"),
        ] {
            assert_eq!(one_month_after(at(from)), at(to), "{from}");
        }
        for day in -800_000..800_000 {
            if day % 997 == 0 {
                let (y, m, d) = civil(day);
                assert_eq!(day_number(y, m, d), Some(day));
            }
        }
    }
}
