//! Dispositions: the codes a campaign offers its agents, and what each
//! does to the lead once an agent sets it on a call. No I/O here.

use super::campaign::{invalid, Invalid};

/// Codes a campaign gets when it names none.
pub const DEFAULT_DISPOSITIONS: [&str; 5] =
    ["SALE", "NO_INTEREST", "CALLBACK", "DNC", "WRONG_NUMBER"];

/// Most codes per campaign.
pub const MAX_DISPOSITIONS: usize = 32;

/// Longest note (characters), as the `call.disposition` contract allows.
pub const MAX_NOTE_CHARS: usize = 1_000;

/// The default codes, owned.
pub fn default_dispositions() -> Vec<String> {
    DEFAULT_DISPOSITIONS
        .iter()
        .map(|c| (*c).to_owned())
        .collect()
}

/// A code is 1-32 of `[A-Z0-9_]`.
pub fn code_ok(code: &str) -> bool {
    (1..=32).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Validates a campaign's list: 1-32 distinct codes, each 1-32 of
/// `[A-Z0-9_]`; a bad code is named by its index (`dispositions[2]`).
pub fn validate_codes(codes: &[String]) -> Result<(), Invalid> {
    if codes.is_empty() || codes.len() > MAX_DISPOSITIONS {
        return Err(invalid(
            "dispositions",
            format!("must hold 1-{MAX_DISPOSITIONS} codes"),
        ));
    }
    for (i, c) in codes.iter().enumerate() {
        if !code_ok(c) {
            return Err(invalid(
                format!("dispositions[{i}]"),
                "codes are 1-32 of [A-Z0-9_]",
            ));
        }
        if codes[..i].contains(c) {
            return Err(invalid(format!("dispositions[{i}]"), "listed twice"));
        }
    }
    Ok(())
}

/// What a disposition does to its lead, by code (any other code is only
/// recorded, and the lead follows the retry policy as the call left it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// `CALLBACK`: the lead is due again at the given time, for the agent.
    Callback,
    /// `DNC`: the number goes on the global do-not-call list.
    DoNotCall,
    /// `SALE`, `NO_INTEREST`, `WRONG_NUMBER`: no more attempts.
    End,
    /// Recorded only.
    Record,
}

impl Effect {
    /// The effect of `code`.
    pub fn of(code: &str) -> Self {
        match code {
            "CALLBACK" => Self::Callback,
            "DNC" => Self::DoNotCall,
            "SALE" | "NO_INTEREST" | "WRONG_NUMBER" => Self::End,
            _ => Self::Record,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn codes_are_validated_and_named() {
        assert!(validate_codes(&default_dispositions()).is_ok());
        assert_eq!(validate_codes(&[]).unwrap_err().field, "dispositions");
        let many: Vec<String> = (0..33).map(|i| format!("C{i}")).collect();
        assert_eq!(validate_codes(&many).unwrap_err().field, "dispositions");
        assert_eq!(
            validate_codes(&codes(&["SALE", "no_sale"]))
                .unwrap_err()
                .field,
            "dispositions[1]"
        );
        assert_eq!(
            validate_codes(&codes(&["SALE", "SALE"])).unwrap_err().field,
            "dispositions[1]"
        );
        assert_eq!(
            validate_codes(&codes(&["A".repeat(33).as_str()]))
                .unwrap_err()
                .field,
            "dispositions[0]"
        );
        assert!(validate_codes(&codes(&["VOICEMAIL_LEFT", "X9"])).is_ok());
        assert!(!code_ok("") && !code_ok("DROP TABLE") && code_ok("A_1"));
    }

    #[test]
    fn effects_follow_the_code() {
        assert_eq!(Effect::of("CALLBACK"), Effect::Callback);
        assert_eq!(Effect::of("DNC"), Effect::DoNotCall);
        for c in ["SALE", "NO_INTEREST", "WRONG_NUMBER"] {
            assert_eq!(Effect::of(c), Effect::End);
        }
        assert_eq!(Effect::of("VOICEMAIL_LEFT"), Effect::Record);
    }
}
