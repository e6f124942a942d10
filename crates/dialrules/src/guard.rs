//! Destination guard against toll fraud.
//!
//! Toll fraud (international revenue share fraud) turns a dialer into a money
//! pump: leads planted on premium-rate, special-rate or satellite numbers earn
//! their owner a share of every minute the campaign pays for. The guard
//! refuses those ranges always, and everything outside the operator's
//! allow-list (`DIALSTACK_ALLOWED_PREFIXES`) or on their deny list
//! (`DIALSTACK_DENIED_PREFIXES`). A denied prefix wins over an allowed one.
//!
//! The check is a scan of a few dozen string prefixes, cheap enough to run on
//! every lead at import and again on every dial.
//!
//! Note that "+1" allows every NANP country, Caribbean ones included; list
//! area codes to narrow it.

/// A range refused whatever the lists say.
struct Range {
    /// E.164 prefix.
    prefix: &'static str,
    /// What it is, for the refusal message.
    kind: &'static str,
    /// Fewest digits (after '+') a number must have to be in the range, where
    /// shorter numbers with the same prefix are ordinary ones.
    min_digits: usize,
}

const fn range(prefix: &'static str, kind: &'static str) -> Range {
    Range {
        prefix,
        kind,
        min_digits: 0,
    }
}

const fn irish_premium(prefix: &'static str) -> Range {
    Range {
        prefix,
        kind: "premium-rate",
        min_digits: 13,
    }
}

/// Ranges refused whatever the lists say.
const BUILT_IN: &[Range] = &[
    // NANP: 900 premium; 976 the old premium exchange code.
    range("+1900", "premium-rate"),
    range("+1976", "premium-rate"),
    // UK (Ofcom): 09 premium; 0871-0873 special-rate with revenue share;
    // 070 personal numbering, a long-standing fraud vehicle.
    range("+449", "premium-rate"),
    range("+44871", "special-rate"),
    range("+44872", "special-rate"),
    range("+44873", "special-rate"),
    range("+4470", "personal-numbering"),
    // France (ARCEP): 089 premium, 082 special-rate.
    range("+3389", "premium-rate"),
    range("+3382", "special-rate"),
    // Germany: 0900 premium, 0137 mass-calling, 118xy directory enquiries.
    range("+49900", "premium-rate"),
    range("+49137", "premium-rate"),
    range("+49118", "special-rate"),
    // Italy: 89x premium, 144 and 166 legacy premium.
    range("+3989", "premium-rate"),
    range("+39144", "premium-rate"),
    range("+39166", "premium-rate"),
    // Spain: 803-807 premium, 905 mass-calling.
    range("+34803", "premium-rate"),
    range("+34804", "premium-rate"),
    range("+34805", "premium-rate"),
    range("+34806", "premium-rate"),
    range("+34807", "premium-rate"),
    range("+34905", "premium-rate"),
    // Rest of the EU/EEA, the UK's neighbours and Switzerland.
    range("+43900", "premium-rate"),
    range("+43901", "premium-rate"),
    range("+43930", "premium-rate"),
    range("+43931", "premium-rate"),
    range("+43939", "premium-rate"),
    range("+3270", "premium-rate"),
    range("+3290", "premium-rate"),
    range("+35990", "premium-rate"),
    range("+38560", "premium-rate"),
    range("+38561", "premium-rate"),
    range("+38564", "premium-rate"),
    range("+38565", "premium-rate"),
    range("+38569", "premium-rate"),
    range("+35790", "premium-rate"),
    range("+420900", "premium-rate"),
    range("+420905", "premium-rate"),
    range("+420906", "premium-rate"),
    range("+420908", "premium-rate"),
    range("+420909", "premium-rate"),
    range("+420976", "premium-rate"),
    range("+4590", "premium-rate"),
    range("+372900", "premium-rate"),
    range("+358600", "premium-rate"),
    range("+358700", "premium-rate"),
    range("+30901", "premium-rate"),
    range("+30909", "premium-rate"),
    range("+3690", "premium-rate"),
    range("+3691", "premium-rate"),
    range("+35490", "premium-rate"),
    // Ireland: 1512-1518, 15x0 and 1598-1599 premium with 10 national
    // digits; Dublin's 1 5xx xxxx has 8.
    irish_premium("+3531512"),
    irish_premium("+3531513"),
    irish_premium("+3531514"),
    irish_premium("+3531515"),
    irish_premium("+3531516"),
    irish_premium("+3531517"),
    irish_premium("+3531518"),
    irish_premium("+3531520"),
    irish_premium("+3531530"),
    irish_premium("+3531540"),
    irish_premium("+3531550"),
    irish_premium("+3531560"),
    irish_premium("+3531570"),
    irish_premium("+3531580"),
    irish_premium("+3531590"),
    irish_premium("+3531598"),
    irish_premium("+3531599"),
    range("+42390", "premium-rate"),
    range("+37090", "premium-rate"),
    range("+370910", "premium-rate"),
    range("+352900", "premium-rate"),
    range("+352901", "premium-rate"),
    range("+352905", "premium-rate"),
    range("+37190", "premium-rate"),
    range("+35650", "premium-rate"),
    range("+3190", "premium-rate"),
    range("+47820", "premium-rate"),
    range("+47829", "premium-rate"),
    range("+4870", "premium-rate"),
    range("+351607", "premium-rate"),
    range("+351608", "premium-rate"),
    range("+351646", "premium-rate"),
    range("+351648", "premium-rate"),
    range("+351760", "premium-rate"),
    range("+351761", "premium-rate"),
    range("+351762", "premium-rate"),
    range("+40900", "premium-rate"),
    range("+40903", "premium-rate"),
    range("+40906", "premium-rate"),
    range("+421900", "premium-rate"),
    range("+386891", "premium-rate"),
    range("+386892", "premium-rate"),
    range("+386893", "premium-rate"),
    range("+38690", "premium-rate"),
    range("+46900", "premium-rate"),
    range("+46939", "premium-rate"),
    range("+46944", "premium-rate"),
    range("+41900", "premium-rate"),
    range("+41901", "premium-rate"),
    range("+41906", "premium-rate"),
    // Elsewhere.
    range("+61190", "premium-rate"),
    range("+64900", "premium-rate"),
    range("+7809", "premium-rate"),
    // ITU global codes: satellite and international networks, billed at
    // satellite or revenue-sharing rates.
    range("+870", "satellite"),
    range("+881", "satellite"),
    range("+882", "international-network"),
    range("+883", "international-network"),
    range("+878", "international-network"),
    range("+888", "international-network"),
    range("+808", "international shared-cost"),
    range("+979", "international premium-rate"),
];

/// Longest E.164 number and prefix: 15 digits.
const MAX_DIGITS: usize = 15;

/// Which destinations may be dialed.
#[derive(Debug, Clone)]
pub struct DestinationGuard {
    /// E.164 prefixes a number must start with; None lets every destination
    /// through (the built-in and operator denials still apply).
    allowed: Option<Vec<String>>,
    /// Operator prefixes refused on top of [`BUILT_IN`].
    denied: Vec<String>,
}

impl DestinationGuard {
    /// `allowed`: comma-separated E.164 prefixes ("" or "*" = every
    /// destination); `denied`: extra denied prefixes added to the built-in
    /// premium/special-rate ranges. Err(reason) when a prefix is not '+'
    /// followed by 1-15 digits. Blanks around entries and empty entries are
    /// ignored.
    pub fn from_lists(allowed: &str, denied: &str) -> Result<Self, String> {
        let allowed = match allowed.trim() {
            "" | "*" => None,
            list => {
                let prefixes = parse_prefixes(list)?;
                // "+1, ," lists nothing after all: refuse rather than allow all.
                if prefixes.is_empty() {
                    return Err("allowed prefixes: no prefix given".to_owned());
                }
                Some(prefixes)
            }
        };
        let denied = parse_prefixes(denied)?;
        Ok(Self { allowed, denied })
    }

    /// A guard that only refuses the built-in ranges.
    pub fn built_in_only() -> Self {
        Self {
            allowed: None,
            denied: Vec::new(),
        }
    }

    /// Ok, or Err(reason) e.g. "+1900... is a premium-rate range" /
    /// "+44... is outside DIALSTACK_ALLOWED_PREFIXES".
    pub fn check(&self, e164: &str) -> Result<(), String> {
        if !is_prefix_shaped(e164) || e164.len() < 4 {
            return Err("not an E.164 number".to_owned());
        }
        let digits = e164.len() - 1;
        if let Some(range) = BUILT_IN
            .iter()
            .find(|range| e164.starts_with(range.prefix) && digits >= range.min_digits)
        {
            return Err(format!("{}... is a {} range", range.prefix, range.kind));
        }
        if let Some(prefix) = self
            .denied
            .iter()
            .find(|prefix| e164.starts_with(prefix.as_str()))
        {
            return Err(format!("{prefix}... is on DIALSTACK_DENIED_PREFIXES"));
        }
        match &self.allowed {
            Some(allowed)
                if !allowed
                    .iter()
                    .any(|prefix| e164.starts_with(prefix.as_str())) =>
            {
                let country = crate::phone::split_calling_code(&e164[1..])
                    .map_or_else(|| e164[..2].to_owned(), |(code, _, _)| format!("+{code}"));
                Err(format!(
                    "{country}... is outside DIALSTACK_ALLOWED_PREFIXES"
                ))
            }
            _ => Ok(()),
        }
    }

    /// The operator's allow-list; None when every destination is allowed.
    pub fn allowed(&self) -> Option<&[String]> {
        self.allowed.as_deref()
    }

    /// The operator's extra denied prefixes (the built-in ranges not included).
    pub fn denied(&self) -> &[String] {
        &self.denied
    }
}

impl Default for DestinationGuard {
    fn default() -> Self {
        Self::built_in_only()
    }
}

fn parse_prefixes(list: &str) -> Result<Vec<String>, String> {
    let mut prefixes: Vec<String> = Vec::new();
    for entry in list
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        if !is_prefix_shaped(entry) {
            return Err(format!(
                "{:?} is not '+' followed by 1-15 digits",
                entry.chars().take(24).collect::<String>()
            ));
        }
        if !prefixes.iter().any(|known| known == entry) {
            prefixes.push(entry.to_owned());
        }
    }
    Ok(prefixes)
}

/// '+' followed by 1 to 15 ASCII digits.
fn is_prefix_shaped(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|digits| {
        (1..=MAX_DIGITS).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::metadata::DATABASE;
    use phonenumber::Type;

    #[test]
    fn premium_ranges_are_refused_by_default() {
        let guard = DestinationGuard::from_lists("", "").unwrap();
        assert_eq!(
            guard.check("+19005550101"),
            Err("+1900... is a premium-rate range".to_owned())
        );
        assert!(guard.check("+19765550101").is_err());
        assert!(guard.check("+449098790000").is_err());
        assert!(guard.check("+448712345678").is_err());
        assert!(guard.check("+33891234567").is_err());
        assert!(guard.check("+499001234567").is_err());
        assert!(guard.check("+39892123456").is_err());
        assert!(guard.check("+34806123456").is_err());
        assert_eq!(
            guard.check("+8816123456789"),
            Err("+881... is a satellite range".to_owned())
        );
        assert!(guard.check("+870773112345").is_err());
        assert!(guard.check("+882123456789").is_err());
        assert!(guard.check("+883123456789").is_err());
        // Ordinary numbers pass.
        for ok in [
            "+14155550101",
            "+442079460018",
            "+447911123456",
            "+33142685300",
            "+4930123456",
        ] {
            assert_eq!(guard.check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn allow_list_limits_destinations() {
        let guard = DestinationGuard::from_lists("+1, +44", "").unwrap();
        assert_eq!(guard.check("+14155550101"), Ok(()));
        assert_eq!(guard.check("+442079460018"), Ok(()));
        assert_eq!(
            guard.check("+33142685300"),
            Err("+33... is outside DIALSTACK_ALLOWED_PREFIXES".to_owned())
        );
        assert_eq!(
            guard.check("+353123456789"),
            Err("+353... is outside DIALSTACK_ALLOWED_PREFIXES".to_owned())
        );
        // The built-in ranges stay refused inside an allowed country.
        assert!(guard
            .check("+19005550101")
            .unwrap_err()
            .contains("premium-rate"));
        // Even when the operator names them.
        let explicit = DestinationGuard::from_lists("+1900", "").unwrap();
        assert!(explicit.check("+19005550101").is_err());
    }

    #[test]
    fn star_or_empty_allows_every_destination() {
        for all in ["", "*", "  *  "] {
            let guard = DestinationGuard::from_lists(all, "").unwrap();
            assert_eq!(guard.allowed(), None);
            assert_eq!(guard.check("+81312345678"), Ok(()));
        }
    }

    #[test]
    fn operator_denials_add_to_the_built_in_ones() {
        let guard = DestinationGuard::from_lists("*", "+1268,+53").unwrap();
        assert_eq!(
            guard.check("+12684601234"),
            Err("+1268... is on DIALSTACK_DENIED_PREFIXES".to_owned())
        );
        assert!(guard.check("+5371234567").is_err());
        assert!(guard
            .check("+19005550101")
            .unwrap_err()
            .contains("premium-rate"));
        assert_eq!(guard.check("+14155550101"), Ok(()));
        assert_eq!(guard.denied(), ["+1268".to_owned(), "+53".to_owned()]);
    }

    #[test]
    fn malformed_prefixes_are_refused() {
        for bad in [
            "1",
            "+",
            "+1a",
            "+1234567890123456",
            "44",
            "+ 1",
            "*,+1",
            "+1;+44",
        ] {
            assert!(
                DestinationGuard::from_lists(bad, "").is_err(),
                "allowed {bad:?}"
            );
        }
        for bad in ["*", "+", "900"] {
            assert!(
                DestinationGuard::from_lists("", bad).is_err(),
                "denied {bad:?}"
            );
        }
        assert!(DestinationGuard::from_lists(" , ", "").is_err());
        let guard = DestinationGuard::from_lists("+1,,+44,", " ").unwrap();
        assert_eq!(
            guard.allowed(),
            Some(["+1".to_owned(), "+44".to_owned()].as_slice())
        );
    }

    #[test]
    fn junk_is_not_checked_as_a_number() {
        let guard = DestinationGuard::default();
        for junk in ["", "+", "14155550101", "+1415555010a", "+1234567890123456"] {
            assert_eq!(
                guard.check(junk),
                Err("not an E.164 number".to_owned()),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn built_in_prefixes_are_well_formed_and_distinct() {
        for (i, range) in BUILT_IN.iter().enumerate() {
            let prefix = range.prefix;
            assert!(is_prefix_shaped(prefix), "{prefix}");
            assert!(!range.kind.is_empty());
            assert!(range.min_digits <= MAX_DIGITS);
            for other in BUILT_IN[i + 1..].iter().map(|other| other.prefix) {
                assert!(
                    !other.starts_with(prefix) && !prefix.starts_with(other),
                    "{prefix} and {other} overlap"
                );
            }
        }
    }

    /// No built-in range covers numbers that libphonenumber's metadata calls
    /// fixed-line or mobile: the guard must not turn away ordinary leads.
    #[test]
    fn built_in_ranges_spare_ordinary_numbers() {
        let mut rng = fastrand::Rng::with_seed(11);
        for range in BUILT_IN {
            let prefix = range.prefix;
            let digits = &prefix[1..];
            let Some((code, national_prefix, lengths)) = crate::phone::split_calling_code(digits)
            else {
                continue; // a global network code, not a country
            };
            for &len in lengths {
                let len = usize::from(len);
                if len <= national_prefix.len()
                    || digits.len() - national_prefix.len() + len < range.min_digits
                {
                    continue;
                }
                for _ in 0..12 {
                    let national: String = national_prefix
                        .chars()
                        .chain(
                            (national_prefix.len()..len).map(|_| char::from(b'0' + rng.u8(0..10))),
                        )
                        .collect();
                    let number = format!("+{code}{national}");
                    let Ok(parsed) = phonenumber::parse(None, &number) else {
                        continue;
                    };
                    let kind = parsed.number_type(&DATABASE);
                    assert!(
                        !matches!(
                            kind,
                            Type::FixedLine | Type::Mobile | Type::FixedLineOrMobile
                        ),
                        "{prefix} covers {number}, a {kind:?} number"
                    );
                }
            }
        }
    }

    /// Every example premium-rate number in libphonenumber's metadata for the
    /// EU/EEA, the UK, Switzerland and NANP is refused.
    #[test]
    fn metadata_premium_examples_are_refused() {
        let guard = DestinationGuard::default();
        let regions = [
            "US", "GB", "FR", "DE", "IT", "ES", "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE",
            "FI", "GR", "HU", "IS", "IE", "LV", "LI", "LT", "LU", "MT", "NL", "NO", "PL", "PT",
            "RO", "SK", "SI", "SE", "CH", "AU", "NZ",
        ];
        for region in regions {
            let meta = DATABASE.by_id(region).unwrap();
            let Some(example) = meta.descriptors().premium_rate().and_then(|d| d.example()) else {
                continue;
            };
            let number = format!("+{}{example}", meta.country_code());
            assert!(
                guard.check(&number).is_err(),
                "{region}: premium example {number} passes"
            );
        }
    }
}
