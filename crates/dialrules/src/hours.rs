//! Calling hours per campaign, in the callee's local time.
//!
//! A window is a set of weekdays and a `[start, end)` wall-clock range that
//! does not cross midnight. "Open" is judged on the callee's wall clock at the
//! instant of the call, so daylight-saving changes move the window in UTC the
//! way they move the callee's day. A lead whose number may ring in several
//! zones is callable only when the window is open in every one of them.
//!
//! [`CallingHours::next_open`] jumps between window edges instead of scanning:
//! per zone, the next opening is either the window start on some local date
//! or a UTC-offset transition (a start inside a spring-forward gap opens at
//! the transition), so it tests those few instants in order; across zones it
//! moves to the latest of the zones' next openings until all agree.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveTime, Offset, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::Zone;

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_DAY: i64 = 86_400 * MS_PER_SECOND;
/// How far [`CallingHours::next_open`] looks ahead.
pub const SEARCH_DAYS: i64 = 8;

/// A day of the week, serialized as "mon", "tue", ... "sun".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// Monday to Sunday.
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// "mon" .. "sun", as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Weekday::Mon => "mon",
            Weekday::Tue => "tue",
            Weekday::Wed => "wed",
            Weekday::Thu => "thu",
            Weekday::Fri => "fri",
            Weekday::Sat => "sat",
            Weekday::Sun => "sun",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Weekday {
    type Err = String;

    /// "mon" .. "sun", in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Weekday::ALL
            .into_iter()
            .find(|day| day.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown day {s:?} (expected mon, tue, wed, thu, fri, sat or sun)")
            })
    }
}

impl From<chrono::Weekday> for Weekday {
    fn from(day: chrono::Weekday) -> Self {
        match day {
            chrono::Weekday::Mon => Weekday::Mon,
            chrono::Weekday::Tue => Weekday::Tue,
            chrono::Weekday::Wed => Weekday::Wed,
            chrono::Weekday::Thu => Weekday::Thu,
            chrono::Weekday::Fri => Weekday::Fri,
            chrono::Weekday::Sat => Weekday::Sat,
            chrono::Weekday::Sun => Weekday::Sun,
        }
    }
}

impl From<Weekday> for chrono::Weekday {
    fn from(day: Weekday) -> Self {
        match day {
            Weekday::Mon => chrono::Weekday::Mon,
            Weekday::Tue => chrono::Weekday::Tue,
            Weekday::Wed => chrono::Weekday::Wed,
            Weekday::Thu => chrono::Weekday::Thu,
            Weekday::Fri => chrono::Weekday::Fri,
            Weekday::Sat => chrono::Weekday::Sat,
            Weekday::Sun => chrono::Weekday::Sun,
        }
    }
}

/// When a campaign may call, on the callee's wall clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallingHours {
    /// Days the window opens; non-empty, no repeats.
    pub days: Vec<Weekday>,
    /// "HH:MM", inclusive.
    pub start: String,
    /// "HH:MM", exclusive; after `start` (the window does not cross
    /// midnight); "24:00" is the end of the day.
    pub end: String,
}

impl Default for CallingHours {
    /// Every day, 08:00 to 21:00: the US federal window (TCPA, 47 CFR
    /// 64.1200(c)(1)). Some places are stricter (Florida: 08:00 to 20:00), so
    /// a campaign sets its own where that applies.
    fn default() -> Self {
        Self {
            days: Weekday::ALL.to_vec(),
            start: "08:00".to_owned(),
            end: "21:00".to_owned(),
        }
    }
}

impl CallingHours {
    /// Validates (days non-empty and unique, times HH:MM with `end` also
    /// "24:00", start < end); Err = (field, reason) with field
    /// "days"|"start"|"end".
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.window().map(|_| ())
    }

    /// Open now in EVERY zone of `zones` (an empty slice means never open).
    /// `now_ms` = ms since the Unix epoch, UTC. Invalid hours are never open.
    pub fn open_in_all(&self, zones: &[Zone], now_ms: i64) -> bool {
        let Ok(window) = self.window() else {
            return false;
        };
        !zones.is_empty() && zones.iter().all(|zone| window.open_at(zone, now_ms))
    }

    /// The earliest instant >= `now_ms` (ms) when [`Self::open_in_all`] holds,
    /// at most [`SEARCH_DAYS`] days ahead; None if there is none (or the hours
    /// are invalid, or `zones` is empty). Exact to the second.
    pub fn next_open(&self, zones: &[Zone], now_ms: i64) -> Option<i64> {
        let window = self.window().ok()?;
        if zones.is_empty() {
            return None;
        }
        let horizon = now_ms.checked_add(SEARCH_DAYS * MS_PER_DAY)?;
        let mut t = now_ms;
        loop {
            // No instant before the latest of the zones' next openings is open
            // in all of them, so jump there; stop when every zone is open at t.
            let mut latest = t;
            for zone in zones {
                latest = latest.max(window.next_open_in(zone, t, horizon)?);
            }
            if latest == t {
                return Some(t);
            }
            t = latest;
        }
    }

    fn window(&self) -> Result<Window, (&'static str, String)> {
        if self.days.is_empty() {
            return Err(("days", "give at least one day".to_owned()));
        }
        let mut days = 0u8;
        for day in &self.days {
            if days & day.bit() != 0 {
                return Err(("days", format!("{day} is listed twice")));
            }
            days |= day.bit();
        }
        let start = parse_hh_mm(&self.start).map_err(|reason| ("start", reason))?;
        // "24:00" ends the window at midnight: a whole day is 00:00-24:00.
        let end = if self.end == "24:00" {
            NaiveTime::from_hms_nano_opt(23, 59, 59, 999_999_999)
                .ok_or(("end", "24:00".to_owned()))?
        } else {
            parse_hh_mm(&self.end).map_err(|reason| ("end", reason))?
        };
        if end <= start {
            return Err(("end", format!("must be after start ({})", self.start)));
        }
        Ok(Window { days, start, end })
    }
}

/// "HH:MM" (00:00 to 23:59), two digits each.
fn parse_hh_mm(s: &str) -> Result<NaiveTime, String> {
    let expected = || format!("expected HH:MM between 00:00 and 23:59, got {s:?}");
    let b = s.as_bytes();
    if b.len() != 5 || b[2] != b':' {
        return Err(expected());
    }
    let two = |hi: u8, lo: u8| -> Option<u32> {
        (hi.is_ascii_digit() && lo.is_ascii_digit())
            .then(|| u32::from(hi - b'0') * 10 + u32::from(lo - b'0'))
    };
    let (Some(hour), Some(minute)) = (two(b[0], b[1]), two(b[3], b[4])) else {
        return Err(expected());
    };
    NaiveTime::from_hms_opt(hour, minute, 0).ok_or_else(expected)
}

/// Validated [`CallingHours`].
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Bit `Weekday as u8` set for each open day.
    days: u8,
    start: NaiveTime,
    end: NaiveTime,
}

impl Window {
    fn open_at(&self, zone: &Zone, t_ms: i64) -> bool {
        let Some(local) = local_time(zone, t_ms) else {
            return false;
        };
        let day = Weekday::from(local.weekday());
        let time = local.time();
        self.days & day.bit() != 0 && self.start <= time && time < self.end
    }

    fn open_on(&self, date: NaiveDate) -> bool {
        self.days & Weekday::from(date.weekday()).bit() != 0
    }

    /// The earliest instant in `[t, horizon]` when this zone is open.
    fn next_open_in(&self, zone: &Zone, t: i64, horizon: i64) -> Option<i64> {
        if self.open_at(zone, t) {
            return Some(t);
        }
        // The zone turns open only where its wall clock reaches `start` on an
        // open day, or where its UTC offset changes (the wall clock jumps, into
        // the window or over a `start` that then never occurs).
        let mut candidates: Vec<i64> = Vec::with_capacity(24);
        let first_date = local_time(zone, t)?.date_naive().pred_opt()?;
        let days = (horizon - t) / MS_PER_DAY + 3;
        for date in first_date.iter_days().take(usize::try_from(days).ok()?) {
            if !self.open_on(date) {
                continue;
            }
            match zone.from_local_datetime(&date.and_time(self.start)) {
                LocalResult::Single(at) => candidates.push(at.timestamp_millis()),
                LocalResult::Ambiguous(first, second) => {
                    candidates.push(first.timestamp_millis());
                    candidates.push(second.timestamp_millis());
                }
                LocalResult::None => {}
            }
        }
        offset_transitions(zone, t, horizon, &mut candidates);
        candidates.retain(|&c| c > t && c <= horizon);
        candidates.sort_unstable();
        candidates.into_iter().find(|&c| self.open_at(zone, c))
    }
}

fn local_time(zone: &Zone, t_ms: i64) -> Option<DateTime<Zone>> {
    Utc.timestamp_millis_opt(t_ms)
        .single()
        .map(|utc| utc.with_timezone(zone))
}

fn offset_seconds(zone: &Zone, t_ms: i64) -> Option<i32> {
    let utc = Utc.timestamp_millis_opt(t_ms).single()?;
    Some(
        zone.offset_from_utc_datetime(&utc.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

/// Pushes the instants in `(t, horizon]` where `zone`'s UTC offset changes.
/// Offsets are sampled daily (zones change at most twice a year, months
/// apart) and each change is pinned to the second by bisection.
fn offset_transitions(zone: &Zone, t: i64, horizon: i64, out: &mut Vec<i64>) {
    let Some(mut before) = offset_seconds(zone, t) else {
        return;
    };
    let mut lo = t;
    while lo < horizon {
        let hi = (lo + MS_PER_DAY).min(horizon);
        let Some(after) = offset_seconds(zone, hi) else {
            return;
        };
        if after != before {
            // Invariant: offset(a) == before, offset(b) == after, in whole seconds.
            let mut a = lo.div_euclid(MS_PER_SECOND);
            let mut b = hi.div_euclid(MS_PER_SECOND) + 1;
            while b - a > 1 {
                let mid = a + (b - a) / 2;
                match offset_seconds(zone, mid * MS_PER_SECOND) {
                    Some(offset) if offset == before => a = mid,
                    Some(_) => b = mid,
                    None => return,
                }
            }
            out.push(b * MS_PER_SECOND);
            before = after;
        }
        lo = hi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDateTime;
    use chrono_tz::{America, Asia, Australia, Europe, Pacific};

    fn hours(days: &[Weekday], start: &str, end: &str) -> CallingHours {
        CallingHours {
            days: days.to_vec(),
            start: start.to_owned(),
            end: end.to_owned(),
        }
    }

    /// ms since the epoch of a UTC "YYYY-MM-DD HH:MM".
    fn utc(s: &str) -> i64 {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp_millis()
    }

    /// ms since the epoch of a wall-clock "YYYY-MM-DD HH:MM" in `zone` (earliest if repeated).
    fn local(zone: Zone, s: &str) -> i64 {
        let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        zone.from_local_datetime(&naive)
            .earliest()
            .unwrap()
            .timestamp_millis()
    }

    const WEEKDAYS: &[Weekday] = &[
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
    ];

    #[test]
    fn default_is_every_day_8_to_21() {
        let default = CallingHours::default();
        assert_eq!(default.days, Weekday::ALL.to_vec());
        assert_eq!(
            (default.start.as_str(), default.end.as_str()),
            ("08:00", "21:00")
        );
        assert_eq!(default.validate(), Ok(()));
    }

    #[test]
    fn serde_uses_lowercase_day_names() {
        let json =
            serde_json::to_string(&hours(&[Weekday::Mon, Weekday::Sun], "09:00", "17:30")).unwrap();
        assert_eq!(
            json,
            r#"{"days":["mon","sun"],"start":"09:00","end":"17:30"}"#
        );
        let back: CallingHours = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hours(&[Weekday::Mon, Weekday::Sun], "09:00", "17:30"));
        assert!(serde_json::from_str::<CallingHours>(
            r#"{"days":["Monday"],"start":"09:00","end":"17:00"}"#
        )
        .is_err());
        assert_eq!("SAT".parse::<Weekday>(), Ok(Weekday::Sat));
        assert_eq!(Weekday::from(chrono::Weekday::Wed), Weekday::Wed);
    }

    #[test]
    fn validate_names_the_field() {
        let field = |h: CallingHours| h.validate().unwrap_err().0;
        assert_eq!(field(hours(&[], "09:00", "17:00")), "days");
        assert_eq!(
            field(hours(&[Weekday::Mon, Weekday::Mon], "09:00", "17:00")),
            "days"
        );
        for bad in [
            "9:00", "09:60", "24:00", "09-00", "", "09:00:00", "ab:cd", "+9:00", "09:0０",
        ] {
            assert_eq!(field(hours(WEEKDAYS, bad, "17:00")), "start", "{bad:?}");
            if bad != "24:00" {
                assert_eq!(field(hours(WEEKDAYS, "00:00", bad)), "end", "{bad:?}");
            }
        }
        assert_eq!(field(hours(WEEKDAYS, "17:00", "17:00")), "end");
        assert_eq!(field(hours(WEEKDAYS, "17:00", "09:00")), "end");
        assert_eq!(hours(WEEKDAYS, "00:00", "23:59").validate(), Ok(()));
        // A whole day ends at 24:00 and is open at one minute to midnight.
        let day = hours(WEEKDAYS, "00:00", "24:00");
        assert_eq!(day.validate(), Ok(()));
        assert!(day.open_in_all(&[America::New_York], utc("2024-06-06 03:59")));
    }

    #[test]
    fn invalid_hours_or_no_zones_are_never_open() {
        let t = utc("2024-06-05 16:00");
        assert!(!hours(&[], "09:00", "17:00").open_in_all(&[America::New_York], t));
        assert_eq!(
            hours(WEEKDAYS, "17:00", "09:00").next_open(&[America::New_York], t),
            None
        );
        assert!(!CallingHours::default().open_in_all(&[], t));
        assert_eq!(CallingHours::default().next_open(&[], t), None);
    }

    #[test]
    fn one_instant_open_in_new_york_not_in_los_angeles() {
        let h = CallingHours::default();
        // Wednesday 13:30 UTC: 09:30 in New York, 06:30 in Los Angeles.
        let t = utc("2024-06-05 13:30");
        assert!(h.open_in_all(&[America::New_York], t));
        assert!(!h.open_in_all(&[America::Los_Angeles], t));
        assert!(!h.open_in_all(&[America::New_York, America::Los_Angeles], t));
        assert_eq!(h.next_open(&[America::New_York], t), Some(t));
        // 08:00 in Los Angeles (PDT, UTC-7) is 15:00 UTC.
        assert_eq!(
            h.next_open(&[America::New_York, America::Los_Angeles], t),
            Some(utc("2024-06-05 15:00"))
        );
    }

    #[test]
    fn end_is_exclusive() {
        let h = hours(Weekday::ALL.as_slice(), "09:00", "17:00");
        let zone = [Europe::London];
        assert!(h.open_in_all(&zone, local(Europe::London, "2024-01-10 09:00")));
        assert!(h.open_in_all(&zone, local(Europe::London, "2024-01-10 16:59")));
        assert!(!h.open_in_all(&zone, local(Europe::London, "2024-01-10 17:00")));
        assert!(!h.open_in_all(&zone, local(Europe::London, "2024-01-10 08:59")));
        assert_eq!(
            h.next_open(&zone, local(Europe::London, "2024-01-10 17:00")),
            Some(local(Europe::London, "2024-01-11 09:00"))
        );
    }

    #[test]
    fn window_follows_the_wall_clock_across_dst() {
        let h = hours(Weekday::ALL.as_slice(), "09:00", "21:00");
        let ny = [America::New_York];
        // Saturday 9 March 2024 is EST (UTC-5), Sunday 10 March EDT (UTC-4).
        assert!(!h.open_in_all(&ny, utc("2024-03-09 13:30")));
        assert!(h.open_in_all(&ny, utc("2024-03-10 13:30")));
        assert_eq!(
            h.next_open(&ny, utc("2024-03-09 02:00")),
            Some(utc("2024-03-09 14:00"))
        );
        // From Saturday 21:00 EST the next opening is Sunday 09:00 EDT = 13:00 UTC.
        assert_eq!(
            h.next_open(&ny, utc("2024-03-10 02:00")),
            Some(utc("2024-03-10 13:00"))
        );
        // And back in November.
        assert_eq!(
            h.next_open(&ny, utc("2024-11-03 03:00")),
            Some(utc("2024-11-03 14:00"))
        );
        // London's change on 31 March 2024.
        let london = [Europe::London];
        assert_eq!(
            h.next_open(&london, utc("2024-03-30 22:00")),
            Some(utc("2024-03-31 08:00"))
        );
    }

    #[test]
    fn start_in_a_spring_forward_gap_opens_at_the_change() {
        // 02:30 never happens in New York on 10 March 2024: clocks go 01:59 EST → 03:00 EDT at 07:00 UTC.
        let h = hours(Weekday::ALL.as_slice(), "02:30", "05:00");
        let ny = [America::New_York];
        assert_eq!(
            h.next_open(&ny, utc("2024-03-10 05:00")),
            Some(utc("2024-03-10 07:00"))
        );
        assert!(h.open_in_all(&ny, utc("2024-03-10 07:00")));
        assert!(!h.open_in_all(&ny, utc("2024-03-10 06:59")));
    }

    #[test]
    fn a_repeated_hour_can_reopen_the_window() {
        // 1 November 2025 is a Saturday; on Sunday 2 November New York's 01:00-02:00 EDT
        // is followed by 01:00-02:00 EST. A 00:30-01:30 window is open twice that night.
        let h = hours(Weekday::ALL.as_slice(), "00:30", "01:30");
        let ny = [America::New_York];
        let first_close = utc("2025-11-02 05:30"); // 01:30 EDT
        assert!(!h.open_in_all(&ny, first_close));
        // The change at 06:00 UTC puts the wall clock back at 01:00 EST, inside the window.
        assert_eq!(h.next_open(&ny, first_close), Some(utc("2025-11-02 06:00")));
    }

    #[test]
    fn next_open_skips_the_weekend() {
        let h = hours(WEEKDAYS, "09:00", "17:00");
        let ny = [America::New_York];
        // Friday 7 June 2024, 17:30 EDT.
        let friday_evening = local(America::New_York, "2024-06-07 17:30");
        assert_eq!(
            h.next_open(&ny, friday_evening),
            Some(local(America::New_York, "2024-06-10 09:00"))
        );
        let saturday = local(America::New_York, "2024-06-08 12:00");
        assert!(!h.open_in_all(&ny, saturday));
        assert_eq!(
            h.next_open(&ny, saturday),
            Some(local(America::New_York, "2024-06-10 09:00"))
        );
    }

    #[test]
    fn next_open_across_several_zones() {
        // New York 09-17 EDT is 13-21 UTC; Honolulu 09-17 HST is 19-03 UTC.
        let h = hours(WEEKDAYS, "09:00", "17:00");
        let zones = [America::New_York, Pacific::Honolulu];
        let t = utc("2024-06-05 12:00");
        assert_eq!(h.next_open(&zones, t), Some(utc("2024-06-05 19:00")));
        assert!(h.open_in_all(&zones, utc("2024-06-05 20:59")));
        assert!(!h.open_in_all(&zones, utc("2024-06-05 21:00")));
        // Friday after the overlap: Monday's.
        assert_eq!(
            h.next_open(&zones, utc("2024-06-07 21:00")),
            Some(utc("2024-06-10 19:00"))
        );
        // Windows that never overlap.
        let short = hours(Weekday::ALL.as_slice(), "09:00", "12:00");
        assert_eq!(short.next_open(&[America::New_York, Asia::Tokyo], t), None);
        // Every mainland NANP zone at once (an unknown area code): 08-21 local.
        let all = crate::zones::zones_for_number("+18005550101");
        let open = CallingHours::default()
            .next_open(&all, utc("2024-06-05 03:00"))
            .unwrap();
        // 08:00 in Anchorage (AKDT, UTC-8) = 16:00 UTC; St John's is then 13:30, inside.
        assert_eq!(open, utc("2024-06-05 16:00"));
    }

    #[test]
    fn next_open_gives_up_after_eight_days() {
        let h = hours(&[Weekday::Mon], "09:00", "10:00");
        let ny = [America::New_York];
        let monday_late = local(America::New_York, "2024-06-10 10:00");
        assert_eq!(
            h.next_open(&ny, monday_late),
            Some(local(America::New_York, "2024-06-17 09:00"))
        );
        // Sydney Mon 09-10 AEST and New York Mon 09-10 EDT never overlap.
        assert_eq!(
            h.next_open(&[America::New_York, Australia::Sydney], monday_late),
            None
        );
    }

    /// next_open equals a minute-by-minute scan, over zones with odd offsets and DST rules.
    #[test]
    fn next_open_matches_a_brute_force_scan() {
        let zones = [
            America::New_York,
            America::Los_Angeles,
            America::St_Johns,
            America::Santiago,
            Europe::London,
            Europe::Berlin,
            Asia::Kathmandu,
            Asia::Kolkata,
            Australia::Lord_Howe,
            Australia::Adelaide,
            Pacific::Chatham,
            Pacific::Honolulu,
        ];
        // Instants near DST changes of 2024 and 2025, and ordinary ones.
        let anchors = [
            utc("2024-03-09 12:00"),
            utc("2024-03-30 12:00"),
            utc("2024-04-06 12:00"),
            utc("2024-09-07 12:00"),
            utc("2024-10-05 12:00"),
            utc("2024-10-26 12:00"),
            utc("2024-11-02 12:00"),
            utc("2025-01-15 12:00"),
            utc("2025-06-15 12:00"),
        ];
        let times = [
            "00:00", "00:30", "01:00", "01:30", "02:00", "02:30", "03:00", "08:00", "09:00",
            "12:45", "17:00", "21:00", "23:59", "24:00",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for case in 0..120 {
            let mut start = times[rng.usize(..times.len())];
            let mut end = times[rng.usize(..times.len())];
            if start == end {
                continue;
            }
            if start > end {
                std::mem::swap(&mut start, &mut end);
            }
            let days: Vec<Weekday> = Weekday::ALL
                .into_iter()
                .filter(|_| rng.u8(..4) != 0)
                .collect();
            if days.is_empty() {
                continue;
            }
            let h = hours(&days, start, end);
            let picked: Vec<Zone> = (0..rng.usize(1..=3))
                .map(|_| zones[rng.usize(..zones.len())])
                .collect();
            let now = anchors[rng.usize(..anchors.len())] + rng.i64(0..3 * MS_PER_DAY);
            let fast = h.next_open(&picked, now);
            let slow = scan(&h, &picked, now);
            assert_eq!(fast, slow, "case {case}: {h:?} in {picked:?} from {now}");
        }
    }

    fn scan(h: &CallingHours, zones: &[Zone], now: i64) -> Option<i64> {
        if h.open_in_all(zones, now) {
            return Some(now);
        }
        let minute = 60 * MS_PER_SECOND;
        let first = (now.div_euclid(minute) + 1) * minute;
        (0..SEARCH_DAYS * 24 * 60)
            .map(|m| first + m * minute)
            .take_while(|&t| t <= now + SEARCH_DAYS * MS_PER_DAY)
            .find(|&t| h.open_in_all(zones, t))
    }
}
