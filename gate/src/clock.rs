//! UTC timestamps as Unix seconds: the payload form `YYYY-MM-DDTHH:MM:SSZ` and the
//! allowed_signers form `YYYYMMDD[HHMM[SS]]Z`. Hand-written (no time crate) because the
//! grammar is tiny and must be exact: one spelling per instant, so rendering round-trips.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0i64, |a, c| a * 10 + i64::from(c - b'0')))
}

fn checked(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || d < 1
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || s > 59
    {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s)
}

/// Parses exactly `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    checked(
        digits(&b[0..4])?,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    )
}

/// Renders Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (the only spelling `parse_utc` accepts).
pub fn format_utc(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Parses an allowed_signers timestamp that must end in `Z`: `YYYYMMDDZ`, `YYYYMMDDHHMMZ` or
/// `YYYYMMDDHHMMSSZ`. Without `Z` OpenSSH would read local time, so it is refused.
pub fn parse_signers_time(s: &str) -> Option<i64> {
    let b = s.strip_suffix('Z')?.as_bytes();
    let (h, mi, sec) = match b.len() {
        8 => (0, 0, 0),
        12 => (digits(&b[8..10])?, digits(&b[10..12])?, 0),
        14 => (digits(&b[8..10])?, digits(&b[10..12])?, digits(&b[12..14])?),
        _ => return None,
    };
    checked(
        digits(&b[0..4])?,
        digits(&b[4..6])?,
        digits(&b[6..8])?,
        h,
        mi,
        sec,
    )
}

/// Renders Unix seconds as `YYYYMMDDHHMMSSZ` (for `ssh-keygen -O verify-time=`).
pub fn format_signers_time(t: i64) -> String {
    format_utc(t)
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'Z')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_non_canonical() {
        let t = parse_utc("2026-11-22T21:00:00Z").unwrap_or_default();
        assert_eq!(t, 1_795_381_200);
        assert_eq!(format_utc(t), "2026-11-22T21:00:00Z");
        assert_eq!(
            parse_utc("2024-02-29T00:00:00Z").map(format_utc).as_deref(),
            Some("2024-02-29T00:00:00Z")
        );
        for bad in [
            "2026-11-22T21:00:00",
            "2026-11-22 21:00:00Z",
            "2026-02-30T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T21:00:60Z",
            "+026-11-22T21:00:00Z",
            "2026-11-22T21:00:00.0Z",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn signers_times_need_z() {
        assert_eq!(
            parse_signers_time("20271231235959Z"),
            parse_utc("2027-12-31T23:59:59Z")
        );
        assert_eq!(
            parse_signers_time("20200101Z"),
            parse_utc("2020-01-01T00:00:00Z")
        );
        assert_eq!(
            parse_signers_time("202001011200Z"),
            parse_utc("2020-01-01T12:00:00Z")
        );
        assert_eq!(parse_signers_time("20271231235959"), None);
        assert_eq!(parse_signers_time("2027123123Z"), None);
        assert_eq!(format_signers_time(1_795_381_200), "20261122210000Z");
    }
}
