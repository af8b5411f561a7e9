//! Dates as JMAP writes them (RFC 3339: `UTCDate` ends in `Z`, `Date`
//! keeps its offset) and as RFC 5322 header fields write them.

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    weekday: usize,
}

fn civil(unix: i64) -> Civil {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        hour: (secs / 3600) as u32,
        minute: (secs / 60 % 60) as u32,
        second: (secs % 60) as u32,
        // 1970-01-01 was a Thursday.
        weekday: (days + 4).rem_euclid(7) as usize,
    }
}

/// A `UTCDate`: `2014-10-30T06:12:00Z`.
pub fn utc_date(unix: i64) -> String {
    let c = civil(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// A `Date` in the offset it was written in: `2014-10-30T14:12:00+08:00`.
pub fn local_date(unix: i64, offset_minutes: i16) -> String {
    let c = civil(unix + offset_minutes as i64 * 60);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let off = offset_minutes.unsigned_abs();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        off / 60,
        off % 60
    )
}

/// An RFC 5322 `date-time`: `Tue, 10 Jul 2018 11:03:11 +1000`.
pub fn rfc5322_date(unix: i64, offset_minutes: i16) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = civil(unix + offset_minutes as i64 * 60);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let off = offset_minutes.unsigned_abs();
    format!(
        "{}, {} {} {:04} {:02}:{:02}:{:02} {sign}{:02}{:02}",
        DAYS[c.weekday],
        c.day,
        MONTHS[(c.month - 1) as usize],
        c.year,
        c.hour,
        c.minute,
        c.second,
        off / 60,
        off % 60
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
        self.unix * 1000 + self.millis as i64
    }
}

/// Parses an RFC 3339 `date-time` (`T` and `Z` in either case, optional
/// fraction, `Z` or `±hh:mm`).
pub fn parse_rfc3339(s: &str) -> Option<Parsed> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = num(0, 4)? as i64;
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
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
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
        + hour as i64 * 3600
        + minute as i64 * 60
        + second.min(59) as i64;
    Some(Parsed {
        unix: local - offset_minutes as i64 * 60,
        millis,
        offset_minutes,
        zulu,
    })
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
}
