//! `kefu records --since TIME [--until TIME] [--json]` (interface §1): customer-service chat
//! records, fetched day by day and paged through to the end.

use super::common::{CmdError, CmdResult};
use crate::config::Config;
use crate::model::{Clock, SystemClock};
use clap::Args;

use super::accounts::{print_json, print_table};
use super::common::{api_client, fmt_time};

#[derive(Args, Debug)]
pub struct RecordsArgs {
    /// Start: RFC 3339 (2024-05-01T08:00:00Z), "2024-05-01 08:00:00" (UTC) or Unix seconds.
    #[arg(long)]
    pub since: String,
    /// End (default: now). Spans over 24 h are fetched day by day.
    #[arg(long)]
    pub until: Option<String>,
    /// Print the records as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cfg: &Config, args: &RecordsArgs) -> CmdResult {
    let since = parse_time(&args.since).map_err(|e| CmdError::Usage(format!("--since: {e}")))?;
    let until = match &args.until {
        Some(u) => parse_time(u).map_err(|e| CmdError::Usage(format!("--until: {e}")))?,
        None => SystemClock.now_secs(),
    };
    if until < since {
        return Err(CmdError::Usage(format!(
            "--until ({}) is before --since ({})",
            fmt_time(until),
            fmt_time(since)
        )));
    }
    let client = api_client(cfg).await?;
    let records = client.records(since, until).await?;
    if args.json {
        return print_json(&records);
    }
    if records.is_empty() {
        crate::outln!("no records between {} and {}", fmt_time(since), fmt_time(until))?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let dir = match r.opercode {
                2002 => "sent".to_string(),
                2003 => "received".to_string(),
                other => other.to_string(),
            };
            vec![fmt_time(r.time), r.worker.clone(), dir, r.openid.clone(), r.text.clone()]
        })
        .collect();
    print_table(&["TIME", "KF", "DIRECTION", "OPENID", "TEXT"], &rows)?;
    Ok(())
}

/// Parses `--since`/`--until`: Unix seconds, RFC 3339 (`2024-05-01T08:00:00Z`,
/// `2024-05-01T16:00:00+08:00`), or `2024-05-01 08:00:00` / `2024-05-01` taken as UTC.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "{s:?} is not a time: write RFC 3339 (2024-05-01T08:00:00Z or \
             2024-05-01T16:00:00+08:00), \"2024-05-01 08:00:00\" (UTC) or Unix seconds"
        )
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = s.get(from..from + len).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (mut h, mut mi, mut sec) = (0, 0, 0);
    let mut rest = &s[10..];
    if !rest.is_empty() {
        if !matches!(rest.as_bytes()[0], b'T' | b't' | b' ') || rest.len() < 9 {
            return Err(bad());
        }
        let t = &rest[1..];
        let tb = t.as_bytes();
        if tb[2] != b':' || tb[5] != b':' {
            return Err(bad());
        }
        let off = 10 + 1;
        (h, mi, sec) = (num(off, 2)?, num(off + 3, 2)?, num(off + 6, 2)?);
        rest = &t[8..];
        // Fractional seconds are dropped: the API works in whole seconds.
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            rest = &frac[digits..];
        }
    }
    let offset = match rest.trim() {
        "" | "Z" | "z" | "UTC" => 0,
        zone => {
            let zb = zone.as_bytes();
            let sign = match zb[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let (zh, zm) = match zone.len() {
                6 if zb[3] == b':' => (zone.get(1..3), zone.get(4..6)),
                5 => (zone.get(1..3), zone.get(3..5)),
                _ => return Err(bad()),
            };
            let (Some(zh), Some(zm)) = (zh, zm) else { return Err(bad()) };
            let zh: i64 = zh.parse().map_err(|_| bad())?;
            let zm: i64 = zm.parse().map_err(|_| bad())?;
            if zh > 23 || zm > 59 {
                return Err(bad());
            }
            sign * (zh * 3600 + zm * 60)
        }
    };
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59
    {
        return Err(bad());
    }
    Ok(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_forms() {
        let t = 1_714_550_400; // 2024-05-01T08:00:00Z
        for s in [
            "1714550400",
            "2024-05-01T08:00:00Z",
            "2024-05-01t08:00:00z",
            "2024-05-01 08:00:00",
            "2024-05-01 08:00:00 UTC",
            "2024-05-01T16:00:00+08:00",
            "2024-05-01T16:00:00+0800",
            "2024-05-01T03:00:00-05:00",
            "2024-05-01T08:00:00.123Z",
        ] {
            assert_eq!(parse_time(s), Ok(t), "{s}");
        }
        assert_eq!(parse_time("2024-05-01"), Ok(t - 8 * 3600));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2000-02-29 00:00:00"), Ok(951_782_400));
        for bad in [
            "",
            "yesterday",
            "2024-13-01",
            "2023-02-29",
            "2024-05-01T25:00:00Z",
            "2024-05-01T08:00",
            "2024-05-01T08:00:00+8",
            "2024/05/01",
            "-5",
            "2024-05-01T08:00:00.Z",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("is not a time"), "{bad}: {e}");
        }
        // Multi-byte input never panics on a slice boundary.
        for weird in [
            "2024-05-01T08:00:00+aé",
            "2024-05-01T08:00:00+é:0",
            "2024-05-01T0é:00:00Z",
            "2024-05-01é",
            "é024-05-01",
        ] {
            assert!(parse_time(weird).is_err(), "{weird}");
        }
    }
}
