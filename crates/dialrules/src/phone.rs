//! Phone numbers: anything a lead list may hold → E.164.
//!
//! # Possible, not strictly valid
//!
//! A number is accepted when its country calling code exists and its length is
//! one libphonenumber lists for that country (libphonenumber's "possible
//! number"), not when it matches the country's allocated ranges ("valid
//! number"). Strict validity rejects the reserved +1 NXX-555 and fictional
//! ranges that test lists and load tests use (+15551000000, +14150000000),
//! and it goes stale as regulators open new ranges, turning real leads away.
//! The one structural rule added on top is NANP's: an area code never starts
//! with 0 or 1.
//!
//! # Speed
//!
//! Input already in E.164 form ('+' and digits, optionally separated by
//! spaces, dashes or dots) takes a fast path: the calling code and length are
//! checked against a table built once from libphonenumber's metadata, with no
//! regular expression and no lock. Everything else goes through the
//! `phonenumber` parser, which is far slower (its regular-expression cache sits
//! behind one process-wide mutex), so national forms in bulk are best parsed
//! off the async runtime.

use std::sync::LazyLock;

use phonenumber::country;
use phonenumber::metadata::DATABASE;
use phonenumber::{Mode, ParseError};

/// Longest input looked at; anything longer is junk, not a number.
pub const MAX_INPUT_LEN: usize = 64;

/// E.164 allows at most 15 digits, calling code included.
const MAX_E164_DIGITS: usize = 15;

const NO_COUNTRY: &str = "no country: give +<country code> or a default region";

/// Parses `input` (E.164 like "+14155550101", or a national form like
/// "(415) 555-0101" when `default_region` gives an ISO 3166 alpha-2 region
/// such as "US", "GB", in any letter case) and returns it in E.164.
///
/// Err is a short human reason ("not a phone number", "too short",
/// "not a valid number for its country", `"no country: give +<country code>
/// or a default region"` ...). Rejects CR/LF/control characters and inputs longer
/// than 64 bytes before parsing.
///
/// Numbers are accepted when *possible* for their country (calling code and
/// length), not only when strictly valid: see the module doc. Letters are
/// refused (no keypad conversion of "1-800-FLOWERS", no "x123" extension:
/// an E.164 string cannot carry one), as is a national form without a region.
pub fn parse_phone(input: &str, default_region: Option<&str>) -> Result<String, String> {
    if input.len() > MAX_INPUT_LEN {
        return Err(format!("longer than {MAX_INPUT_LEN} characters"));
    }
    if input.chars().any(char::is_control) {
        return Err("contains a line break or control character".to_owned());
    }
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err("empty".to_owned());
    }
    if let Some(digits) = plain_e164_digits(trimmed) {
        check_possible(&digits)?;
        let mut e164 = String::with_capacity(digits.len() + 1);
        e164.push('+');
        e164.push_str(&digits);
        return Ok(e164);
    }

    // The parser would read letters as a keypad ("1-800-FLOWERS"); in a lead
    // list a letter is far more often a typo, and a guessed digit dials a
    // stranger.
    let body = trimmed.strip_prefix("tel:").unwrap_or(trimmed);
    if body.chars().any(char::is_alphabetic) {
        return Err("contains letters (extensions and vanity numbers are not accepted)".to_owned());
    }
    if !body.bytes().any(|b| b.is_ascii_digit()) {
        return Err("not a phone number".to_owned());
    }
    // Without a '+' or a region the parser may still take leading digits for a
    // calling code ("44 20 ..."); that guess is not ours to make.
    if default_region.is_none() && !body.contains('+') {
        return Err(NO_COUNTRY.to_owned());
    }
    let region = default_region.map(region_id).transpose()?;
    let number = phonenumber::parse(region, trimmed).map_err(|error| match error {
        ParseError::InvalidCountryCode => "unknown country code".to_owned(),
        ParseError::TooShortAfterIdd | ParseError::TooShortNsn => "too short".to_owned(),
        ParseError::TooLong => "too long".to_owned(),
        ParseError::NoNumber | ParseError::MalformedInteger(_) => "not a phone number".to_owned(),
    })?;
    if number.extension().is_some() {
        return Err("has an extension, which cannot be dialed".to_owned());
    }
    let e164 = number.format().mode(Mode::E164).to_string();
    let digits = e164.strip_prefix('+').unwrap_or(&e164);
    check_possible(digits)?;
    Ok(format!("+{digits}"))
}

/// Whether `region` is a known ISO alpha-2 region for phonenumber (any letter
/// case: "US", "gb").
pub fn region_ok(region: &str) -> bool {
    region_id(region).is_ok()
}

fn region_id(region: &str) -> Result<country::Id, String> {
    let trimmed = region.trim();
    let unknown =
        || format!("unknown region {trimmed:?} (expected ISO 3166 alpha-2 such as \"US\")");
    if trimmed.len() != 2 || !trimmed.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(unknown());
    }
    let upper = trimmed.to_ascii_uppercase();
    if DATABASE.by_id(upper.as_str()).is_none() {
        return Err(unknown());
    }
    upper.parse::<country::Id>().map_err(|_| unknown())
}

/// The digits of `s` when it is '+' then digits, with at most single spaces,
/// dashes or dots between digits. Parentheses send it to the full parser,
/// which knows that "+44 (0)20" drops the "(0)".
fn plain_e164_digits(s: &str) -> Option<String> {
    let rest = s.strip_prefix('+')?;
    let mut digits = String::with_capacity(rest.len());
    let mut after_separator = true;
    for b in rest.bytes() {
        match b {
            b'0'..=b'9' => {
                digits.push(char::from(b));
                after_separator = false;
            }
            b' ' | b'-' | b'.' if !after_separator => after_separator = true,
            _ => return None,
        }
    }
    if after_separator {
        return None;
    }
    Some(digits)
}

/// Calling code → the national-number lengths its numbers can have, from
/// libphonenumber's metadata, built once. UAN and voicemail ranges are left
/// out: they add lengths that are only dialable nationally (Canada's 7-digit
/// 310-xxxx), which would make a 7-digit "+1" number possible.
static LENGTHS: LazyLock<Vec<Option<Vec<u16>>>> = LazyLock::new(|| {
    let mut table: Vec<Option<Vec<u16>>> = vec![None; 1000];
    for meta in DATABASE.iter() {
        let Some(slot) = table.get_mut(usize::from(meta.country_code())) else {
            continue;
        };
        let lengths = slot.get_or_insert_with(Vec::new);
        let d = meta.descriptors();
        let descriptors = [
            Some(d.general()),
            d.fixed_line(),
            d.mobile(),
            d.toll_free(),
            d.premium_rate(),
            d.shared_cost(),
            d.personal_number(),
            d.voip(),
            d.pager(),
        ];
        for descriptor in descriptors.into_iter().flatten() {
            lengths.extend_from_slice(descriptor.possible_length());
        }
        lengths.sort_unstable();
        lengths.dedup();
    }
    table
});

/// Splits E.164 digits into calling code and national number, with the
/// national lengths for that code. Calling codes are prefix-free, so the first
/// match is the only one.
pub(crate) fn split_calling_code(digits: &str) -> Option<(u16, &str, &'static [u16])> {
    (1..=3.min(digits.len())).find_map(|len| {
        let code: u16 = digits[..len].parse().ok()?;
        let lengths = LENGTHS.get(usize::from(code))?.as_deref()?;
        Some((code, &digits[len..], lengths))
    })
}

fn check_possible(digits: &str) -> Result<(), String> {
    if digits.len() < 3 {
        return Err("not a phone number".to_owned());
    }
    if digits.len() > MAX_E164_DIGITS {
        return Err("too long".to_owned());
    }
    let Some((code, national, lengths)) = split_calling_code(digits) else {
        return Err("unknown country code".to_owned());
    };
    let len = u16::try_from(national.len()).unwrap_or(u16::MAX);
    match (lengths.first(), lengths.last()) {
        (Some(&min), _) if len < min => return Err("too short".to_owned()),
        (_, Some(&max)) if len > max => return Err("too long".to_owned()),
        _ if !lengths.contains(&len) => return Err("not a valid number for its country".to_owned()),
        _ => {}
    }
    if code == 1 && matches!(national.as_bytes().first(), Some(b'0' | b'1')) {
        return Err("not a valid number for its country".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_is_returned_as_is() {
        assert_eq!(
            parse_phone("+14155550101", None).as_deref(),
            Ok("+14155550101")
        );
        assert_eq!(
            parse_phone(" +442079460018 ", None).as_deref(),
            Ok("+442079460018")
        );
        assert_eq!(
            parse_phone("+390612345678", None).as_deref(),
            Ok("+390612345678")
        );
    }

    #[test]
    fn test_and_fictional_nanp_ranges_are_possible() {
        // Used by the scheduler's tests, the demo and the benchmarks.
        for n in [
            "+14155550101",
            "+15551000000",
            "+14150000000",
            "+15550100000",
            "+12345678901",
        ] {
            assert_eq!(parse_phone(n, None).as_deref(), Ok(n));
        }
        for i in [0, 1, 9999] {
            let n = format!("+1415555{i:04}");
            assert_eq!(parse_phone(&n, Some("US")), Ok(n));
        }
    }

    #[test]
    fn separated_e164_is_normalized() {
        assert_eq!(
            parse_phone("+1 415 555 0101", None).as_deref(),
            Ok("+14155550101")
        );
        assert_eq!(
            parse_phone("+1-415-555-0101", None).as_deref(),
            Ok("+14155550101")
        );
        assert_eq!(
            parse_phone("+44 20 7946 0018", None).as_deref(),
            Ok("+442079460018")
        );
        assert_eq!(
            parse_phone("+44 (0)20 7946 0018", None).as_deref(),
            Ok("+442079460018")
        );
        assert_eq!(
            parse_phone("+1 (415) 555-0101", None).as_deref(),
            Ok("+14155550101")
        );
    }

    #[test]
    fn national_forms_with_a_region() {
        assert_eq!(
            parse_phone("(415) 555-0101", Some("US")).as_deref(),
            Ok("+14155550101")
        );
        assert_eq!(
            parse_phone("415.555.0101", Some("us")).as_deref(),
            Ok("+14155550101")
        );
        assert_eq!(
            parse_phone("1 415 555 0101", Some("US")).as_deref(),
            Ok("+14155550101")
        );
        assert_eq!(
            parse_phone("020 7946 0018", Some("GB")).as_deref(),
            Ok("+442079460018")
        );
        assert_eq!(
            parse_phone("07911 123456", Some("GB")).as_deref(),
            Ok("+447911123456")
        );
        assert_eq!(
            parse_phone("030 1234567", Some("DE")).as_deref(),
            Ok("+49301234567")
        );
        assert_eq!(
            parse_phone("01 42 68 53 00", Some("FR")).as_deref(),
            Ok("+33142685300")
        );
        // An international form wins over the region.
        assert_eq!(
            parse_phone("+44 20 7946 0018", Some("US")).as_deref(),
            Ok("+442079460018")
        );
        assert_eq!(
            parse_phone("011 44 20 7946 0018", Some("US")).as_deref(),
            Ok("+442079460018")
        );
    }

    #[test]
    fn national_form_without_a_region_names_the_fix() {
        assert_eq!(
            parse_phone("(415) 555-0101", None),
            Err(NO_COUNTRY.to_owned())
        );
        assert_eq!(parse_phone("4155550101", None), Err(NO_COUNTRY.to_owned()));
    }

    #[test]
    fn junk_is_rejected() {
        for junk in [
            "",
            "   ",
            "hello",
            "+",
            "+-",
            "+1+4155550101",
            "+1415555010a",
            "n/a",
            "+1  415",
        ] {
            let result = parse_phone(junk, Some("US"));
            assert!(result.is_err(), "{junk:?} gave {result:?}");
        }
        assert!(parse_phone("hello", Some("US"))
            .unwrap_err()
            .contains("letters"));
        assert_eq!(
            parse_phone("--", Some("US")),
            Err("not a phone number".to_owned())
        );
        assert!(parse_phone("1-800-FLOWERS", Some("US")).is_err());
        assert!(parse_phone("+1 415 555 0101 x12", None).is_err());
        assert!(parse_phone("+1 415 555 0101;ext=12", None).is_err());
    }

    #[test]
    fn line_breaks_and_control_characters_are_rejected() {
        for bad in [
            "+14155550101\r\n",
            "+1415555\n0101",
            "+14155550101\0",
            "\t+14155550101",
            "+1415\u{7f}5550101",
        ] {
            let err = parse_phone(bad, Some("US")).unwrap_err();
            assert!(err.contains("control"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn long_input_is_rejected_before_parsing() {
        let long = format!("+1415555{}", "0".repeat(60));
        assert!(parse_phone(&long, None)
            .unwrap_err()
            .contains("longer than 64"));
        let padded = format!("{}+14155550101", " ".repeat(MAX_INPUT_LEN));
        assert!(parse_phone(&padded, None).is_err());
    }

    #[test]
    fn lengths_are_checked_per_country() {
        assert_eq!(
            parse_phone("+1415555010", None),
            Err("too short".to_owned())
        );
        assert_eq!(
            parse_phone("+141555501011", None),
            Err("too long".to_owned())
        );
        assert_eq!(
            parse_phone("+1234567890123456", None),
            Err("too long".to_owned())
        );
        assert_eq!(
            parse_phone("+10155550101", None),
            Err("not a valid number for its country".to_owned())
        );
        assert_eq!(
            parse_phone("+99912345678", None),
            Err("unknown country code".to_owned())
        );
        assert!(parse_phone("+4912", None).is_err());
    }

    #[test]
    fn regions() {
        assert!(region_ok("US"));
        assert!(region_ok("gb"));
        assert!(region_ok("DE"));
        assert!(!region_ok("XX"));
        assert!(!region_ok("USA"));
        assert!(!region_ok("001"));
        assert!(!region_ok(""));
        let err = parse_phone("(415) 555-0101", Some("ZZ")).unwrap_err();
        assert!(err.contains("unknown region"), "{err}");
    }
}
