//! Shifting dates back by a whole number of days (Retain Longitudinal Temporal Information
//! with Modified Dates): intervals between a patient's dates survive, the calendar dates do
//! not.

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// `YYYYMMDD` shifted back by `days`; `None` when the text is not a valid full date.
fn shift_ymd(ymd: &str, days: u32) -> Option<String> {
    if ymd.len() != 8 || !ymd.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = ymd[0..4].parse().ok()?;
    let m: i64 = ymd[4..6].parse().ok()?;
    let d: i64 = ymd[6..8].parse().ok()?;
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let (y, m, d) = civil_from_days(days_from_civil(y, m, d) - i64::from(days));
    (0..=9999)
        .contains(&y)
        .then(|| format!("{y:04}{m:02}{d:02}"))
}

/// A DA value (one or several, `\`-separated) shifted back by `days`. A value that is not a
/// full date (partial, ACR-NEMA dotted form excepted) cannot be shifted and is dropped:
/// keeping it unshifted would give the real date away.
pub fn shift_da(value: &str, days: u32) -> String {
    value
        .split('\\')
        .map(|v| {
            let v = v.trim_matches(|c: char| c == ' ' || c == '\0');
            let v = if v.len() == 10 && v.as_bytes()[4] == b'.' && v.as_bytes()[7] == b'.' {
                v.replace('.', "")
            } else {
                v.to_string()
            };
            shift_ymd(&v, days).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("\\")
}

/// A DT value shifted back by `days`: the date part moves, the time of day and the UTC
/// offset stay. A date-time without a full date is dropped, for the reason of [`shift_da`].
pub fn shift_dt(value: &str, days: u32) -> String {
    value
        .split('\\')
        .map(|v| {
            let v = v.trim_matches(|c: char| c == ' ' || c == '\0');
            match (v.get(..8), v.get(8..)) {
                (Some(ymd), Some(rest)) => shift_ymd(ymd, days)
                    .map(|d| format!("{d}{rest}"))
                    .unwrap_or_default(),
                _ => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_move_back_across_months_years_and_leap_days() {
        assert_eq!(shift_da("20240301", 1), "20240229");
        assert_eq!(shift_da("20230301", 1), "20230228");
        assert_eq!(shift_da("20200101", 365), "20190101");
        assert_eq!(shift_da("19700101", 1), "19691231");
        assert_eq!(shift_da("20200115\\20200116", 10), "20200105\\20200106");
        assert_eq!(shift_da("2020.01.15", 10), "20200105");
        assert_eq!(shift_da("2020", 10), "");
        assert_eq!(shift_da("20201341", 10), "");
        assert_eq!(shift_da("", 10), "");
        assert_eq!(
            shift_dt("20200301120000.5+0100", 1),
            "20200229120000.5+0100"
        );
        assert_eq!(shift_dt("20200301", 1), "20200229");
        assert_eq!(shift_dt("202003", 1), "");
    }

    #[test]
    fn day_counts_round_trip() {
        for z in [-800_000, -1, 0, 1, 18_000, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
