//! Rough throughput of the hot calls, for sizing a lead import and the hopper:
//!
//! ```sh
//! cargo run --release -p dialstack-dialrules --example bench
//! ```
//!
//! Not a test: figures depend on the machine. Each line prints calls per
//! second (single thread) and the cost of one call.

use std::hint::black_box;
use std::time::{Duration, Instant};

use dialstack_dialrules::guard::DestinationGuard;
use dialstack_dialrules::hours::{CallingHours, Weekday};
use dialstack_dialrules::phone::parse_phone;
use dialstack_dialrules::zones::zones_for_number;

fn report(name: &str, calls: u64, elapsed: Duration) {
    let per_second = calls as f64 / elapsed.as_secs_f64();
    let ns = elapsed.as_nanos() as f64 / calls as f64;
    println!("{name:<48} {per_second:>14.0} /s {ns:>10.0} ns/call");
}

fn run(name: &str, calls: u64, mut f: impl FnMut(u64)) {
    // Warm the lazily built tables first.
    f(0);
    let start = Instant::now();
    for i in 0..calls {
        f(i);
    }
    report(name, calls, start.elapsed());
}

fn main() {
    let e164: Vec<String> = (0..10_000).map(|i| format!("+1415555{i:04}")).collect();
    let spaced: Vec<String> = (0..10_000).map(|i| format!("+1 415 555 {i:04}")).collect();
    let national: Vec<String> = (0..10_000).map(|i| format!("(415) 555-{i:04}")).collect();
    let uk: Vec<String> = (0..10_000).map(|i| format!("020 7946 {i:04}")).collect();

    run("parse_phone E.164 (fast path)", 1_000_000, |i| {
        black_box(parse_phone(black_box(&e164[(i % 10_000) as usize]), None).ok());
    });
    run(
        "parse_phone '+1 415 555 0101' (fast path)",
        1_000_000,
        |i| {
            black_box(parse_phone(black_box(&spaced[(i % 10_000) as usize]), None).ok());
        },
    );
    run("parse_phone '(415) 555-0101' US (parser)", 20_000, |i| {
        black_box(parse_phone(black_box(&national[(i % 10_000) as usize]), Some("US")).ok());
    });
    run("parse_phone '020 7946 0018' GB (parser)", 20_000, |i| {
        black_box(parse_phone(black_box(&uk[(i % 10_000) as usize]), Some("GB")).ok());
    });

    run("zones_for_number", 1_000_000, |i| {
        black_box(zones_for_number(black_box(&e164[(i % 10_000) as usize])));
    });

    let guard = DestinationGuard::from_lists("+1,+44", "+1268").unwrap_or_default();
    run("DestinationGuard::check", 1_000_000, |i| {
        black_box(guard.check(black_box(&e164[(i % 10_000) as usize])).ok());
    });

    let default = CallingHours::default();
    let weekdays = CallingHours {
        days: vec![
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ],
        start: "09:00".to_owned(),
        end: "17:00".to_owned(),
    };
    let ny = zones_for_number("+12125550101");
    let split = zones_for_number("+18505550101");
    let unknown = zones_for_number("+18005550101");
    // Wednesday 5 June 2024 00:00 UTC, stepped by 7 min 13 s across two weeks.
    let base = 1_717_545_600_000_i64;
    let at = |i: u64| base + (i as i64 * 433_000) % (14 * 86_400_000);

    run("open_in_all, 1 zone", 1_000_000, |i| {
        black_box(default.open_in_all(black_box(&ny), at(i)));
    });
    run("open_in_all, 9 zones (unknown NANP code)", 1_000_000, |i| {
        black_box(default.open_in_all(black_box(&unknown), at(i)));
    });
    run("next_open, 1 zone, every day 08-21", 200_000, |i| {
        black_box(default.next_open(black_box(&ny), at(i)));
    });
    run("next_open, 1 zone, mon-fri 09-17", 200_000, |i| {
        black_box(weekdays.next_open(black_box(&ny), at(i)));
    });
    run("next_open, 2 zones, mon-fri 09-17", 200_000, |i| {
        black_box(weekdays.next_open(black_box(&split), at(i)));
    });
    run("next_open, 9 zones, mon-fri 09-17", 100_000, |i| {
        black_box(weekdays.next_open(black_box(&unknown), at(i)));
    });
}
