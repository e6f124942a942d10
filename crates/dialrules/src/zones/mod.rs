//! Time zones a number may ring in.
//!
//! Where the numbering plan says where a number is (the NANP area code, a
//! trunk code in a few multi-zone countries) the answer is that place's zones;
//! otherwise every zone of the country. Callers check the calling window in
//! every zone returned, so a longer list is the conservative answer.
//!
//! The tables are Rust constants (`nanp.rs`, `countries.rs`) so that a zone
//! name that chrono-tz does not know fails the build, not a lookup.

mod countries;
mod nanp;

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::Zone;

/// One line of a table: a label for people reading it, the zones, and the
/// prefixes (NANP area codes, or digits after '+') that ring there.
pub(crate) struct Group<P: 'static> {
    #[allow(dead_code)]
    label: &'static str,
    zones: &'static [Zone],
    prefixes: &'static [P],
}

impl<P> Group<P> {
    const fn new(label: &'static str, zones: &'static [Zone], prefixes: &'static [P]) -> Self {
        Self {
            label,
            zones,
            prefixes,
        }
    }
}

/// Digits after '+' → zones, built once from the tables.
struct Table {
    by_prefix: HashMap<String, &'static [Zone]>,
    longest: usize,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let mut by_prefix = HashMap::new();
    by_prefix.insert("1".to_owned(), nanp::UNKNOWN);
    for group in nanp::AREAS {
        for area in group.prefixes {
            by_prefix.insert(format!("1{area:03}"), group.zones);
        }
    }
    for group in countries::COUNTRIES {
        for prefix in group.prefixes {
            by_prefix.insert((*prefix).to_owned(), group.zones);
        }
    }
    let longest = by_prefix.keys().map(String::len).max().unwrap_or(0);
    Table { by_prefix, longest }
});

/// IANA zone by name ("America/New_York"); Err names why.
pub fn parse_zone(name: &str) -> Result<Zone, String> {
    if name.len() > 64 || name.chars().any(char::is_control) {
        return Err("not an IANA time zone name".to_owned());
    }
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err("time zone is empty".to_owned());
    }
    trimmed.parse::<Zone>().map_err(|_| {
        format!(
            "unknown time zone {trimmed:?} (expected an IANA name such as \"America/New_York\")"
        )
    })
}

/// The zones an E.164 number may ring in: by country calling code, and for
/// NANP (+1) by area code. An unknown NANP area code (toll-free, personal,
/// not yet in the table) maps to every US and Canadian mainland zone. Empty
/// when the country is not in the table or `e164` is not '+' and digits.
///
/// Each call allocates the returned `Vec`; the lookup itself is a few hash
/// probes on the number's leading digits.
pub fn zones_for_number(e164: &str) -> Vec<Zone> {
    lookup(e164).map(<[Zone]>::to_vec).unwrap_or_default()
}

/// The table entry for `e164`'s longest known prefix.
fn lookup(e164: &str) -> Option<&'static [Zone]> {
    let digits = e164.strip_prefix('+')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let table = &*TABLE;
    (1..=table.longest.min(digits.len()))
        .rev()
        .find_map(|len| table.by_prefix.get(&digits[..len]).copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America, Asia, Atlantic, Australia, Europe, Pacific};
    use std::collections::HashSet;

    #[test]
    fn nanp_area_codes_map_to_their_zones() {
        assert_eq!(zones_for_number("+12125550101"), vec![America::New_York]);
        assert_eq!(zones_for_number("+14155550101"), vec![America::Los_Angeles]);
        assert_eq!(zones_for_number("+18085550101"), vec![Pacific::Honolulu]);
        assert_eq!(zones_for_number("+13125550101"), vec![America::Chicago]);
        assert_eq!(zones_for_number("+13035550101"), vec![America::Denver]);
        assert_eq!(zones_for_number("+16025550101"), vec![America::Phoenix]);
        assert_eq!(zones_for_number("+14165550101"), vec![America::Toronto]);
        assert_eq!(zones_for_number("+17875550101"), vec![America::Puerto_Rico]);
        assert_eq!(zones_for_number("+18765550101"), vec![America::Jamaica]);
    }

    #[test]
    fn split_states_list_every_zone() {
        // The Florida panhandle.
        assert_eq!(
            zones_for_number("+18505550101"),
            vec![America::New_York, America::Chicago]
        );
        // Western Kansas.
        assert_eq!(
            zones_for_number("+17855550101"),
            vec![America::Chicago, America::Denver]
        );
        assert_eq!(
            zones_for_number("+19075550101"),
            vec![America::Anchorage, America::Adak]
        );
    }

    #[test]
    fn unknown_nanp_area_code_is_every_mainland_zone() {
        let toll_free = zones_for_number("+18005550101");
        assert_eq!(toll_free, nanp::UNKNOWN.to_vec());
        assert!(toll_free.contains(&America::New_York));
        assert!(toll_free.contains(&America::Los_Angeles));
        assert!(!toll_free.contains(&Pacific::Honolulu));
        // A code that was never assigned.
        assert_eq!(zones_for_number("+15551000000"), nanp::UNKNOWN.to_vec());
    }

    #[test]
    fn countries_map_to_their_zones() {
        assert_eq!(zones_for_number("+442079460018"), vec![Europe::London]);
        assert_eq!(zones_for_number("+33142685300"), vec![Europe::Paris]);
        assert_eq!(zones_for_number("+4930123456"), vec![Europe::Berlin]);
        assert_eq!(zones_for_number("+919876543210"), vec![Asia::Kolkata]);
        assert_eq!(zones_for_number("+35312345678"), vec![Europe::Dublin]);
        // Multi-zone countries: all zones, unless a trunk code says more.
        assert!(zones_for_number("+79161234567").len() > 5);
        assert_eq!(zones_for_number("+74951234567"), vec![Europe::Moscow]);
        assert_eq!(zones_for_number("+61412345678").len(), 5);
        assert_eq!(zones_for_number("+61298765432"), vec![Australia::Sydney]);
        assert_eq!(
            zones_for_number("+34612345678"),
            vec![Europe::Madrid, Atlantic::Canary]
        );
        assert_eq!(zones_for_number("+34928123456"), vec![Atlantic::Canary]);
        assert_eq!(zones_for_number("+5511987654321"), vec![America::Sao_Paulo]);
        assert_eq!(
            zones_for_number("+5568987654321"),
            vec![America::Rio_Branco]
        );
        assert_eq!(zones_for_number("+5215512345678").len(), 7);
        assert_eq!(
            zones_for_number("+525512345678"),
            vec![America::Mexico_City]
        );
    }

    #[test]
    fn unknown_country_or_junk_is_empty() {
        // +888: OCHA's international network, not a country.
        assert!(zones_for_number("+8881234567").is_empty());
        assert!(zones_for_number("").is_empty());
        assert!(zones_for_number("+").is_empty());
        assert!(zones_for_number("14155550101").is_empty());
        assert!(zones_for_number("+1415abc0101").is_empty());
    }

    #[test]
    fn the_required_countries_are_covered() {
        let required = [
            // EU, EEA, UK, CH
            "43", "32", "359", "385", "357", "420", "45", "372", "358", "33", "49", "30", "36",
            "353", "39", "371", "370", "352", "356", "31", "48", "351", "40", "421", "386", "34",
            "46", "354", "423", "47", "44", "41", // populous elsewhere
            "1", "7", "20", "27", "51", "52", "54", "55", "56", "57", "58", "60", "61", "62", "63",
            "64", "66", "81", "82", "84", "86", "90", "91", "92", "93", "95", "98", "212", "213",
            "233", "234", "243", "244", "249", "251", "254", "255", "256", "258", "380", "880",
            "964", "966", "998",
        ];
        for code in required {
            assert!(
                lookup(&format!("+{code}5550101")).is_some(),
                "+{code} has no zones"
            );
        }
    }

    #[test]
    fn tables_have_no_duplicate_or_malformed_prefixes() {
        let mut seen = HashSet::new();
        for group in nanp::AREAS {
            assert!(!group.zones.is_empty(), "{}", group.label);
            for area in group.prefixes {
                assert!((200..=999).contains(area), "{}: {area}", group.label);
                assert!(seen.insert(format!("1{area}")), "area code {area} twice");
            }
        }
        for group in countries::COUNTRIES {
            assert!(!group.zones.is_empty(), "{}", group.label);
            for prefix in group.prefixes {
                assert!(
                    !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()),
                    "{}: {prefix:?}",
                    group.label
                );
                assert!(
                    !prefix.starts_with('1'),
                    "{}: NANP goes in nanp.rs",
                    group.label
                );
                assert!(seen.insert((*prefix).to_owned()), "prefix {prefix} twice");
            }
        }
    }

    #[test]
    fn country_prefixes_are_real_calling_codes() {
        // Every top-level country prefix is a calling code libphonenumber knows.
        let db = &*phonenumber::metadata::DATABASE;
        for group in countries::COUNTRIES {
            for prefix in group.prefixes {
                let known = (1..=3.min(prefix.len())).any(|len| {
                    prefix[..len]
                        .parse::<u16>()
                        .ok()
                        .and_then(|code| db.region(&code))
                        .is_some()
                });
                assert!(known, "{}: +{prefix} is not a calling code", group.label);
            }
        }
    }

    #[test]
    fn parse_zone_accepts_iana_names_only() {
        assert_eq!(parse_zone("America/New_York"), Ok(America::New_York));
        assert_eq!(parse_zone(" Europe/London "), Ok(Europe::London));
        assert!(parse_zone("").is_err());
        assert!(parse_zone("Mars/Olympus_Mons")
            .unwrap_err()
            .contains("unknown time zone"));
        assert!(parse_zone("America/New_York\r\n").is_err());
        assert!(parse_zone("America/New\nYork").is_err());
    }
}
