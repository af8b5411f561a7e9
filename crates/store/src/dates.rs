//! Dates, the one place Tern turns unix seconds into calendar dates and
//! back: JMAP's `UTCDate` and `Date` (RFC 8620 section 1.4: RFC 3339
//! `date-time`, a `UTCDate` in `Z`) and RFC 5322 header dates, both with
//! an offset. Proleptic Gregorian calendar; years 0000 to 9999 (four
//! digits) parse.

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month 1-12, day 1-31) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Whether `year` has a 29 February.
pub fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The days of `month` (1-12) in `year`; `None` for another month.
pub fn days_in_month(year: i64, month: u32) -> Option<u32> {
    Some(match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => return None,
    })
}

/// A moment in local time: calendar fields and weekday.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: i64,
    minute: i64,
    second: i64,
    /// 0 is Sunday.
    weekday: usize,
}

impl Civil {
    /// `unix` seen from `offset_minutes` east of UTC.
    fn at(unix: i64, offset_minutes: i16) -> Self {
        let local = unix + i64::from(offset_minutes) * 60;
        let days = local.div_euclid(86_400);
        let secs = local.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as usize,
        }
    }
}

/// `offset_minutes` as a sign, hours and minutes.
fn offset_parts(offset_minutes: i16) -> (char, u16, u16) {
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let off = offset_minutes.unsigned_abs();
    (sign, off / 60, off % 60)
}

/// A JMAP `UTCDate`: `2014-10-30T06:12:00Z`.
pub fn utc_date(unix: i64) -> String {
    let c = Civil::at(unix, 0);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// A JMAP `Date` in the offset it was written in:
/// `2014-10-30T14:12:00+08:00`.
pub fn local_date(unix: i64, offset_minutes: i16) -> String {
    let c = Civil::at(unix, offset_minutes);
    let (sign, h, m) = offset_parts(offset_minutes);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{h:02}:{m:02}",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// An RFC 5322 `date-time` in `offset_minutes`:
/// `Tue, 10 Jul 2018 11:03:11 +1000`.
pub fn rfc5322_date(unix: i64, offset_minutes: i16) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = Civil::at(unix, offset_minutes);
    let (sign, h, m) = offset_parts(offset_minutes);
    format!(
        "{}, {} {} {:04} {:02}:{:02}:{:02} {sign}{h:02}{m:02}",
        DAYS[c.weekday],
        c.day,
        MONTHS[(c.month - 1) as usize],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// A parsed RFC 3339 date-time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Whole seconds since the epoch (UTC).
    pub unix: i64,
    /// Milliseconds past `unix` (from a fractional second).
    pub millis: u32,
    /// The offset written, in minutes (`Z` is 0).
    pub offset_minutes: i16,
    /// Whether the offset was written `Z`.
    pub zulu: bool,
}

impl Parsed {
    /// Milliseconds since the epoch.
    pub fn unix_millis(&self) -> i64 {
        self.unix * 1000 + i64::from(self.millis)
    }
}

/// Parses an RFC 3339 `date-time` (a JMAP `Date`): `T` and `Z` in either
/// case (RFC 3339 section 5.6), an optional fraction (kept to the
/// millisecond), `Z` or `±hh:mm`; the date must exist (30 February does
/// not), a leap second counts as second 59.
pub fn parse_rfc3339(s: &str) -> Option<Parsed> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = i64::from(num(0, 4)?);
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    let hour = num(11, 2)?;
    let minute = num(14, 2)?;
    let second = num(17, 2)?;
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't'))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let last_day = days_in_month(year, month)?;
    if day == 0 || day > last_day || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0u32;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        let frac = &s[start..at.min(start + 3)];
        millis = frac.parse::<u32>().ok()? * 10u32.pow(3 - frac.len() as u32);
    }
    let (offset_minutes, zulu) = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => (0i16, true),
        Some(&sign @ (b'+' | b'-')) if at + 6 == b.len() && b.get(at + 3) == Some(&b':') => {
            let h = num(at + 1, 2)?;
            let m = num(at + 4, 2)?;
            if h > 23 || m > 59 {
                return None;
            }
            let off = (h * 60 + m) as i16;
            (if sign == b'-' { -off } else { off }, false)
        }
        _ => return None,
    };
    let local = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second.min(59));
    Some(Parsed {
        unix: local - i64::from(offset_minutes) * 60,
        millis,
        offset_minutes,
        zulu,
    })
}

/// Parses a JMAP `UTCDate` to unix seconds: an RFC 3339 date-time as
/// [`parse_rfc3339`] reads it, in `Z`, with its letters uppercase (RFC 8620
/// section 1.4); a fraction is dropped.
pub fn parse_utc_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.get(10) != Some(&b'T') || !s.ends_with('Z') {
        return None;
    }
    parse_rfc3339(s).filter(|p| p.zulu).map(|p| p.unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(utc_date(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_date(1_531_184_591), "2018-07-10T01:03:11Z");
        assert_eq!(local_date(1_531_184_591, 600), "2018-07-10T11:03:11+10:00");
        assert_eq!(local_date(0, -90), "1969-12-31T22:30:00-01:30");
        assert_eq!(
            rfc5322_date(1_531_184_591, 600),
            "Tue, 10 Jul 2018 11:03:11 +1000"
        );
        let p = parse_rfc3339("2018-07-10T11:03:11+10:00").unwrap();
        assert_eq!(
            (p.unix, p.offset_minutes, p.zulu),
            (1_531_184_591, 600, false)
        );
        let p = parse_rfc3339("2018-07-10T01:03:11.25Z").unwrap();
        assert_eq!((p.unix, p.millis, p.zulu), (1_531_184_591, 250, true));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z").unwrap().unix, -1);
        for bad in [
            "2018-07-10",
            "2018-07-10T01:03:11",
            "2018-02-30T01:03:11Z",
            "2018-07-10T01:03:11+1000",
            "2018-07-10T01:03:11Zx",
            "2018-07-10T01:03:11.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc5322_dates_name_the_weekday_and_offset() {
        assert_eq!(rfc5322_date(0, 0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_331_020, 0),
            "Sun, 22 Nov 2026 07:03:40 +0000"
        );
        // West of UTC the day (and weekday) can be the one before.
        assert_eq!(rfc5322_date(0, -300), "Wed, 31 Dec 1969 19:00:00 -0500");
        assert_eq!(
            rfc5322_date(951_782_400, 0),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }

    #[test]
    fn utc_dates_are_strict() {
        assert_eq!(parse_utc_date("2026-11-22T07:03:40Z"), Some(1_795_331_020));
        assert_eq!(parse_utc_date("1970-01-01T00:00:00.5Z"), Some(0));
        for bad in [
            "2026-13-22T07:03:40Z",
            "yesterday",
            "2018-07-06T02:14:29+00:00",
            "2018-07-06t02:14:29Z",
            "2018-07-06T02:14:29z",
            "2018-07-06T02:14:29.Z",
            "2026-11-22T07x03x40Z",
            "2026-02-31T00:00:00Z",
            "+2026-11-22T07:03:40Z",
        ] {
            assert_eq!(parse_utc_date(bad), None, "{bad}");
        }
    }

    /// Every day of four centuries (a full Gregorian cycle, leap rules of
    /// 4, 100 and 400 years included) and the bounds of four-digit years:
    /// the day count and the calendar agree both ways.
    #[test]
    fn days_and_dates_round_trip() {
        let first = days_from_civil(1900, 1, 1);
        let mut expected = (1900i64, 1u32, 1u32);
        for days in first..first + 146_097 {
            assert_eq!(civil_from_days(days), expected);
            assert_eq!(days_from_civil(expected.0, expected.1, expected.2), days);
            let (y, m, d) = expected;
            expected = if d < days_in_month(y, m).unwrap() {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
        assert_eq!(expected, (2300, 1, 1));
        assert!(is_leap_year(2000) && is_leap_year(2024) && is_leap_year(0));
        assert!(!is_leap_year(1900) && !is_leap_year(2100) && !is_leap_year(2023));
    }

    #[test]
    fn dates_round_trip_through_text() {
        let min = days_from_civil(0, 1, 1) * 86_400;
        let max = days_from_civil(9999, 12, 31) * 86_400 + 86_399;
        assert_eq!(utc_date(min), "0000-01-01T00:00:00Z");
        assert_eq!(utc_date(max), "9999-12-31T23:59:59Z");
        let leap_days = [
            days_from_civil(0, 2, 29),
            days_from_civil(2000, 2, 29),
            days_from_civil(2024, 2, 29),
        ];
        let mut moments = vec![min, max, -1, 0, 1, 951_782_400, 1_795_331_020];
        moments.extend(leap_days.iter().map(|d| d * 86_400 + 43_210));
        for unix in moments {
            let text = utc_date(unix);
            assert_eq!(parse_utc_date(&text), Some(unix), "{text}");
            // Local times must stay within the four-digit years.
            if unix - min < 86_400 || max - unix < 86_400 {
                continue;
            }
            for offset in [0i16, 60, -90, 330, 840, -720] {
                let text = local_date(unix, offset);
                let back = parse_rfc3339(&text).unwrap();
                assert_eq!((back.unix, back.offset_minutes), (unix, offset), "{text}");
                assert!(!back.zulu);
            }
        }
        assert_eq!(utc_date(leap_days[1] * 86_400), "2000-02-29T00:00:00Z");
        assert_eq!(parse_rfc3339("1900-02-29T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339("0000-02-29T00:00:00Z").unwrap().unix,
            leap_days[0] * 86_400
        );
        // Offsets move the local fields, not the moment.
        assert_eq!(
            parse_rfc3339("9999-12-31T23:59:59-23:59").unwrap().unix,
            max + 23 * 3600 + 59 * 60
        );
        assert_eq!(
            parse_rfc3339("0000-01-01T00:00:00+00:30").unwrap().unix,
            min - 1800
        );
    }
}
