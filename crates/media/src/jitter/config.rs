//! Jitter buffer settings: [`Mode`], [`JitterConfig`] and how it is read
//! from the environment ([`JitterConfig::from_lookup`]).

/// Accepted range of every delay setting, in milliseconds.
const MS_RANGE: std::ops::RangeInclusive<u32> = 20..=1000;

const VAR_MS: &str = "DIALSTACK_JITTER_BUFFER_MS";
const VAR_MODE: &str = "DIALSTACK_JITTER_BUFFER_MODE";
const VAR_MIN: &str = "DIALSTACK_JITTER_BUFFER_MIN_MS";
const VAR_MAX: &str = "DIALSTACK_JITTER_BUFFER_MAX_MS";

/// How the target delay is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Always the nominal delay.
    Fixed,
    /// Follows the measured jitter, between the minimum and the maximum.
    Adaptive,
}

/// Jitter buffer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitterConfig {
    /// Fixed or adaptive target.
    pub mode: Mode,
    /// The delay of fixed mode, and where adaptive mode starts.
    pub nominal_ms: u32,
    /// Lowest target of adaptive mode.
    pub min_ms: u32,
    /// Highest target of adaptive mode.
    pub max_ms: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Fixed,
            nominal_ms: 50,
            min_ms: 20,
            max_ms: 200,
        }
    }
}

impl JitterConfig {
    /// Reads `DIALSTACK_JITTER_BUFFER_MS` (default 50),
    /// `DIALSTACK_JITTER_BUFFER_MODE` (`fixed` | `adaptive`, default fixed),
    /// `DIALSTACK_JITTER_BUFFER_MIN_MS` (default 20) and
    /// `DIALSTACK_JITTER_BUFFER_MAX_MS` (default 200) through `get`; an
    /// empty value counts as unset. Each delay must be 20-1000 ms, the
    /// minimum at most the maximum, and in adaptive mode the nominal delay
    /// within them. Errors are one line naming the variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let defaults = Self::default();
        let value = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mode = match value(VAR_MODE) {
            None => defaults.mode,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "fixed" => Mode::Fixed,
                "adaptive" => Mode::Adaptive,
                _ => return Err(format!("{VAR_MODE}: must be fixed or adaptive, got {v:?}")),
            },
        };
        let millis = |name: &str, default: u32| -> Result<u32, String> {
            let Some(v) = value(name) else {
                return Ok(default);
            };
            match v.parse::<u32>() {
                Ok(ms) if MS_RANGE.contains(&ms) => Ok(ms),
                _ => Err(format!("{name}: must be 20-1000 (milliseconds), got {v:?}")),
            }
        };
        let nominal_ms = millis(VAR_MS, defaults.nominal_ms)?;
        let min_ms = millis(VAR_MIN, defaults.min_ms)?;
        let max_ms = millis(VAR_MAX, defaults.max_ms)?;
        if min_ms > max_ms {
            return Err(format!(
                "{VAR_MIN}: must not exceed {VAR_MAX} ({max_ms}), got {min_ms}"
            ));
        }
        if mode == Mode::Adaptive && !(min_ms..=max_ms).contains(&nominal_ms) {
            return Err(format!(
                "{VAR_MS}: must be within {VAR_MIN} and {VAR_MAX} ({min_ms}-{max_ms}) in adaptive mode, got {nominal_ms}"
            ));
        }
        Ok(Self {
            mode,
            nominal_ms,
            min_ms,
            max_ms,
        })
    }

    /// The same settings forced into the accepted ranges, for a config
    /// built by hand.
    pub(super) fn normalized(&self) -> Self {
        let min_ms = self.min_ms.clamp(*MS_RANGE.start(), *MS_RANGE.end());
        let max_ms = self.max_ms.clamp(min_ms, *MS_RANGE.end());
        let nominal_ms = match self.mode {
            Mode::Fixed => self.nominal_ms.clamp(*MS_RANGE.start(), *MS_RANGE.end()),
            Mode::Adaptive => self.nominal_ms.clamp(min_ms, max_ms),
        };
        Self {
            mode: self.mode,
            nominal_ms,
            min_ms,
            max_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_lookup() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            JitterConfig::from_lookup(env(&[])),
            Ok(JitterConfig::default())
        );
        assert_eq!(
            JitterConfig::from_lookup(env(&[
                (VAR_MS, "80"),
                (VAR_MODE, " Adaptive "),
                (VAR_MIN, "40"),
                (VAR_MAX, "300"),
            ])),
            Ok(JitterConfig {
                mode: Mode::Adaptive,
                nominal_ms: 80,
                min_ms: 40,
                max_ms: 300,
            })
        );
        // Fixed mode ignores the adaptive bounds.
        assert_eq!(
            JitterConfig::from_lookup(env(&[(VAR_MS, "500"), (VAR_MODE, "fixed")]))
                .map(|c| c.nominal_ms),
            Ok(500)
        );
        assert_eq!(
            JitterConfig::from_lookup(env(&[(VAR_MS, "")])),
            Ok(JitterConfig::default())
        );
        let cases: [(&[(&str, &str)], &str); 7] = [
            (&[(VAR_MS, "10")], VAR_MS),
            (&[(VAR_MS, "1001")], VAR_MS),
            (&[(VAR_MS, "fifty")], VAR_MS),
            (&[(VAR_MODE, "elastic")], VAR_MODE),
            (&[(VAR_MIN, "-5")], VAR_MIN),
            (&[(VAR_MIN, "300")], VAR_MIN),
            (&[(VAR_MODE, "adaptive"), (VAR_MS, "500")], VAR_MS),
        ];
        for (pairs, var) in cases {
            let get = |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            };
            let err = JitterConfig::from_lookup(get).unwrap_err();
            assert!(err.starts_with(&format!("{var}: ")), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert_eq!(
            JitterConfig::from_lookup(env(&[(VAR_MS, "5")])).unwrap_err(),
            "DIALSTACK_JITTER_BUFFER_MS: must be 20-1000 (milliseconds), got \"5\""
        );
    }
}
