use dialstack_dialrules::zones::parse_zone;

use super::*;

/// 2026-11-27 (a Friday) 15:00 UTC: 10:00 in New York, 07:00 in Los Angeles.
const FRI_15_UTC: i64 = 1_795_791_600_000;
/// One hour later: 08:00 in Los Angeles.
const FRI_16_UTC: i64 = 1_795_795_200_000;
const H: i64 = 3_600_000;

fn hours() -> CallingHours {
    serde_json::from_value(serde_json::json!({
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "start": "08:00", "end": "21:00"
    }))
    .unwrap()
}

struct Fixture {
    hours: CallingHours,
    guard: DestinationGuard,
    ny: Vec<Zone>,
    la: Vec<Zone>,
    both: Vec<Zone>,
}

fn fixture() -> Fixture {
    let ny = parse_zone("America/New_York").unwrap();
    let la = parse_zone("America/Los_Angeles").unwrap();
    Fixture {
        hours: hours(),
        guard: DestinationGuard::from_lists("+1,+44", "").unwrap(),
        ny: vec![ny],
        la: vec![la],
        both: vec![ny, la],
    }
}

fn verdict(f: &Fixture, now: i64, zones: &[Zone], h: History, phone: &str) -> Verdict {
    let lead = LeadFacts {
        state: LeadState::Pending,
        due_at: FRI_15_UTC - 1,
        attempts: 1,
        phone,
        zones,
    };
    let campaign = CampaignRules {
        state: CampaignState::Running,
        hours: &f.hours,
        max_attempts: Some(3),
        max_attempts_per_day: Some(2),
    };
    let deployment = DeploymentRules {
        guard: &f.guard,
        number_daily_cap: Some(3),
    };
    eligibility(now, &lead, &h, &campaign, &deployment)
}

#[test]
fn calling_hours_hold_in_the_callees_zone_across_a_boundary() {
    let f = fixture();
    let ok = History::default();
    assert_eq!(
        verdict(&f, FRI_15_UTC, &f.ny, ok, "+12125550100"),
        Verdict::Dial
    );
    // 07:00 in Los Angeles: wait until 08:00 there, one hour later.
    assert_eq!(
        verdict(&f, FRI_15_UTC, &f.la, ok, "+14155550100"),
        Verdict::Wait {
            until: FRI_16_UTC,
            why: Why::OutsideHours
        }
    );
    // A number that may be in either zone waits for both.
    assert!(matches!(
        verdict(&f, FRI_15_UTC, &f.both, ok, "+14155550100"),
        Verdict::Wait {
            until: FRI_16_UTC,
            why: Why::OutsideHours
        }
    ));
    // The clock moves on: at 16:00 UTC every zone is open.
    assert_eq!(
        verdict(&f, FRI_16_UTC, &f.both, ok, "+14155550100"),
        Verdict::Dial
    );
    // No zone known: never inside a window.
    assert!(matches!(
        verdict(&f, FRI_16_UTC, &[], ok, "+14155550100"),
        Verdict::Wait {
            why: Why::OutsideHours,
            ..
        }
    ));
}

#[test]
fn dnc_guard_and_caps_come_before_the_clock() {
    let f = fixture();
    let dnc = History {
        dnc: true,
        ..Default::default()
    };
    assert_eq!(
        verdict(&f, FRI_16_UTC, &f.ny, dnc, "+12125550100"),
        Verdict::Close {
            state: LeadState::Dnc,
            why: Why::DoNotCall
        }
    );
    assert!(matches!(
        verdict(&f, FRI_16_UTC, &f.ny, History::default(), "+33612345678"),
        Verdict::Close {
            state: LeadState::Blocked,
            ..
        }
    ));
    let day = History {
        lead_day: 2,
        lead_day_oldest: Some(FRI_15_UTC - 2 * H),
        ..Default::default()
    };
    assert_eq!(
        verdict(&f, FRI_16_UTC, &f.ny, day, "+12125550100"),
        Verdict::Wait {
            until: FRI_15_UTC - 2 * H + DAY_MS,
            why: Why::LeadDailyCap
        }
    );
    let number = History {
        number_day: 3,
        number_day_oldest: Some(FRI_15_UTC - H),
        ..Default::default()
    };
    assert_eq!(
        verdict(&f, FRI_16_UTC, &f.ny, number, "+12125550100"),
        Verdict::Wait {
            until: FRI_15_UTC - H + DAY_MS,
            why: Why::NumberDailyCap
        }
    );
    let abandoned = History {
        abandoned_at: Some(FRI_15_UTC - 71 * H),
        ..Default::default()
    };
    assert_eq!(
        verdict(&f, FRI_15_UTC, &f.ny, abandoned, "+12125550100"),
        Verdict::Wait {
            until: FRI_15_UTC + H,
            why: Why::RecentlyAbandoned
        }
    );
    let long_ago = History {
        abandoned_at: Some(FRI_15_UTC - 73 * H),
        ..Default::default()
    };
    assert_eq!(
        verdict(&f, FRI_16_UTC, &f.ny, long_ago, "+12125550100"),
        Verdict::Dial
    );
}

#[test]
fn lifetime_cap_state_and_due_time() {
    let f = fixture();
    let campaign = CampaignRules {
        state: CampaignState::Running,
        hours: &f.hours,
        max_attempts: Some(3),
        max_attempts_per_day: None,
    };
    let deployment = DeploymentRules {
        guard: &f.guard,
        number_daily_cap: None,
    };
    let mut lead = LeadFacts {
        state: LeadState::Pending,
        due_at: FRI_16_UTC,
        attempts: 0,
        phone: "+12125550100",
        zones: &f.ny,
    };
    let h = History::default();
    assert_eq!(
        eligibility(FRI_15_UTC, &lead, &h, &campaign, &deployment),
        Verdict::Wait {
            until: FRI_16_UTC,
            why: Why::NotDue
        }
    );
    assert_eq!(
        eligibility(FRI_16_UTC, &lead, &h, &campaign, &deployment),
        Verdict::Dial
    );
    lead.attempts = 3;
    assert_eq!(
        eligibility(FRI_16_UTC, &lead, &h, &campaign, &deployment),
        Verdict::Close {
            state: LeadState::Done,
            why: Why::Exhausted
        }
    );
    lead.attempts = 0;
    lead.state = LeadState::Dialing;
    assert_eq!(
        eligibility(FRI_16_UTC, &lead, &h, &campaign, &deployment),
        Verdict::Skip(Why::NotPending)
    );
    lead.state = LeadState::Pending;
    let paused = CampaignRules {
        state: CampaignState::Paused,
        ..campaign
    };
    assert_eq!(
        eligibility(FRI_16_UTC, &lead, &h, &paused, &deployment),
        Verdict::Skip(Why::NotRunning)
    );
}
