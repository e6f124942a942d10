//! A lead as imported: validation of one row (JSON object or CSV record)
//! into a number in E.164 with its time zones, priority and profile fields.
//! No I/O here; the do-not-call check needs the database and is done by the
//! importer.

use std::collections::BTreeMap;

use dialstack_dialrules::guard::DestinationGuard;
use dialstack_dialrules::{phone, zones};
use serde::Deserialize;

use super::campaign::name_ok;

/// Most custom profile columns in one import.
pub const MAX_CUSTOM_FIELDS: usize = 50;
/// Most bytes in one field value.
pub const MAX_FIELD_LEN: usize = 1_000;

/// The rules an import applies to every row.
#[derive(Debug, Clone, Copy)]
pub struct ImportRules<'a> {
    /// The destination guard.
    pub guard: &'a DestinationGuard,
    /// Region for numbers without a country code.
    pub default_region: Option<&'a str>,
}

/// One lead as sent (a JSON object of `POST /leads`, or a CSV record).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeadInput {
    /// The number: E.164, or national with the campaign's `default_region`.
    pub phone: String,
    /// IANA time zone (e.g. `America/Chicago`); default: derived from the number.
    #[serde(default)]
    pub timezone: Option<String>,
    /// 0-9, higher first (default 0).
    #[serde(default)]
    pub priority: Option<u8>,
    /// The customer's id in the operator's CRM.
    #[serde(default)]
    pub external_id: Option<String>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// The agent who owns the lead.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Other profile fields (sent to storage-service with the profile).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// A lead ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidLead {
    /// E.164.
    pub phone: String,
    /// The time zone given, if any.
    pub timezone: Option<String>,
    /// Every zone the callee may be in, comma-separated IANA names.
    pub zones: String,
    /// 0-9.
    pub priority: u8,
    /// CRM id.
    pub external_id: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Owning agent.
    pub agent_id: Option<String>,
    /// Custom profile fields.
    pub fields: BTreeMap<String, String>,
}

/// Most lead fields kept for prompts (what a `dial` command carries).
pub const MAX_PROMPT_FIELDS: usize = dialstack_contract::MAX_DIAL_FIELDS;
/// Longest lead field value kept for prompts (characters; longer ones are
/// cut).
pub const MAX_PROMPT_VALUE_CHARS: usize = 200;

impl ValidLead {
    /// The fields prompts may say (`{first_name}`): `first_name`,
    /// `last_name` and `external_id`, then the custom fields in name order
    /// (a custom field never hides a named one), at most
    /// [`MAX_PROMPT_FIELDS`], names of at most 64 bytes, values cut at
    /// [`MAX_PROMPT_VALUE_CHARS`] characters.
    pub fn prompt_fields(&self) -> BTreeMap<String, String> {
        let cut = |v: &str| -> String { v.chars().take(MAX_PROMPT_VALUE_CHARS).collect() };
        let mut out = BTreeMap::new();
        for (k, v) in [
            ("first_name", &self.first_name),
            ("last_name", &self.last_name),
            ("external_id", &self.external_id),
        ] {
            if let Some(v) = v {
                out.insert(k.to_owned(), cut(v));
            }
        }
        for (k, v) in &self.fields {
            if out.len() >= MAX_PROMPT_FIELDS {
                break;
            }
            if !k.is_empty() && k.len() <= 64 && !out.contains_key(k) {
                out.insert(k.clone(), cut(v));
            }
        }
        out
    }

    /// Whether it carries profile data for storage-service.
    pub fn has_profile(&self) -> bool {
        self.external_id.is_some()
            || self.first_name.is_some()
            || self.last_name.is_some()
            || !self.fields.is_empty()
    }
}

fn text(
    col: &'static str,
    v: &Option<String>,
    max: usize,
) -> Result<Option<String>, (String, String)> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) if s.len() > max || s.chars().any(char::is_control) => Err((
            col.to_owned(),
            format!("must be at most {max} bytes without control characters"),
        )),
        Some(s) => Ok(Some(s.to_owned())),
    }
}

impl LeadInput {
    /// Validates the row; Err is (column, reason).
    pub fn validate(self, rules: &ImportRules<'_>) -> Result<ValidLead, (String, String)> {
        let e164 = phone::parse_phone(self.phone.trim(), rules.default_region)
            .map_err(|e| ("phone".to_owned(), format!("bad number: {e}")))?;
        rules
            .guard
            .check(&e164)
            .map_err(|e| ("phone".to_owned(), format!("destination not allowed: {e}")))?;
        let timezone = text("timezone", &self.timezone, 64)?;
        let zones = match &timezone {
            Some(tz) => zones::parse_zone(tz)
                .map(|z| vec![z])
                .map_err(|e| ("timezone".to_owned(), format!("bad time zone: {e}")))?,
            None => zones::zones_for_number(&e164),
        };
        if zones.is_empty() {
            return Err((
                "timezone".to_owned(),
                "no time zone known for this number: give a timezone column".to_owned(),
            ));
        }
        let priority = self.priority.unwrap_or(0);
        if priority > 9 {
            return Err((
                "priority".to_owned(),
                "bad priority: must be 0-9".to_owned(),
            ));
        }
        let agent_id = match self.agent_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) if name_ok(a) => Some(a.to_owned()),
            Some(_) => {
                return Err((
                    "agent_id".to_owned(),
                    "must be 1-64 of [A-Za-z0-9._-]".to_owned(),
                ))
            }
        };
        if self.fields.len() > MAX_CUSTOM_FIELDS {
            return Err((
                "fields".to_owned(),
                format!("at most {MAX_CUSTOM_FIELDS} custom fields"),
            ));
        }
        for (k, v) in &self.fields {
            if !field_name_ok(k) {
                return Err((
                    k.clone(),
                    "field names must be 1-64 of [A-Za-z0-9_ .-]".to_owned(),
                ));
            }
            if v.len() > MAX_FIELD_LEN || v.chars().any(|c| c.is_control() && c != '\t') {
                return Err((
                    k.clone(),
                    format!("must be at most {MAX_FIELD_LEN} bytes without control characters"),
                ));
            }
        }
        let names: Vec<&str> = zones.iter().map(|z| z.name()).collect();
        Ok(ValidLead {
            phone: e164,
            timezone,
            zones: names.join(","),
            priority,
            external_id: text("external_id", &self.external_id, 64)?,
            first_name: text("first_name", &self.first_name, 100)?,
            last_name: text("last_name", &self.last_name, 100)?,
            agent_id,
            fields: self.fields,
        })
    }
}

/// Custom field names: 1-64 of `[A-Za-z0-9_ .-]`.
pub fn field_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_ .-".contains(&b))
}

/// Where each known column sits in a CSV header.
#[derive(Debug, Clone)]
pub struct Columns {
    phone: usize,
    timezone: Option<usize>,
    priority: Option<usize>,
    external_id: Option<usize>,
    first_name: Option<usize>,
    last_name: Option<usize>,
    agent_id: Option<usize>,
    custom: Vec<(usize, String)>,
}

impl Columns {
    /// Reads the header row (names are trimmed and matched case-blind).
    pub fn from_header<'a>(header: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let names: Vec<String> = header
            .into_iter()
            .map(|h| h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
            .collect();
        let find = |n: &str| names.iter().position(|h| h == n);
        let phone = find("phone").ok_or("the header has no phone column")?;
        let known = [
            "phone",
            "timezone",
            "priority",
            "external_id",
            "first_name",
            "last_name",
            "agent_id",
        ];
        let mut custom = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(format!("column {n:?} appears twice"));
            }
            if !known.contains(&n.as_str()) {
                if !field_name_ok(n) {
                    return Err(format!(
                        "column {:?}: names must be 1-64 of [A-Za-z0-9_ .-]",
                        n.chars().take(64).collect::<String>()
                    ));
                }
                custom.push((i, n.clone()));
            }
        }
        if custom.len() > MAX_CUSTOM_FIELDS {
            return Err(format!("at most {MAX_CUSTOM_FIELDS} custom columns"));
        }
        Ok(Self {
            phone,
            timezone: find("timezone"),
            priority: find("priority"),
            external_id: find("external_id"),
            first_name: find("first_name"),
            last_name: find("last_name"),
            agent_id: find("agent_id"),
            custom,
        })
    }

    /// Turns one record into a [`LeadInput`]; Err is (column, reason).
    pub fn lead(&self, record: &[&str]) -> Result<LeadInput, (String, String)> {
        let get = |i: Option<usize>| {
            i.and_then(|i| record.get(i))
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let priority = match get(self.priority) {
            None => None,
            Some(p) => Some(p.parse::<u8>().ok().filter(|p| *p <= 9).ok_or((
                "priority".to_owned(),
                "bad priority: must be 0-9".to_owned(),
            ))?),
        };
        let mut fields = BTreeMap::new();
        for (i, name) in &self.custom {
            if let Some(v) = record.get(*i).map(|s| s.trim()).filter(|s| !s.is_empty()) {
                fields.insert(name.clone(), v.to_owned());
            }
        }
        Ok(LeadInput {
            phone: get(Some(self.phone)).unwrap_or_default(),
            timezone: get(self.timezone),
            priority,
            external_id: get(self.external_id),
            first_name: get(self.first_name),
            last_name: get(self.last_name),
            agent_id: get(self.agent_id),
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> DestinationGuard {
        DestinationGuard::from_lists("+1,+44", "").unwrap()
    }

    #[test]
    fn csv_rows_map_to_leads_with_custom_fields() {
        let cols =
            Columns::from_header(["Phone", "timezone", "priority", "first_name", "Plan"]).unwrap();
        let lead = cols
            .lead(&["+12125550100", "America/New_York", "7", "Ann", "gold"])
            .unwrap();
        assert_eq!(lead.priority, Some(7));
        assert_eq!(lead.fields.get("plan").map(String::as_str), Some("gold"));
        let g = guard();
        let v = lead
            .validate(&ImportRules {
                guard: &g,
                default_region: None,
            })
            .unwrap();
        assert_eq!(v.zones, "America/New_York");
        assert!(v.has_profile());
        assert_eq!(
            cols.lead(&["+12125550100", "", "10"]).unwrap_err().0,
            "priority"
        );
        assert!(Columns::from_header(["name", "number"]).is_err());
        assert!(Columns::from_header(["phone", "a", "a"]).is_err());
        assert!(Columns::from_header(["phone", "bad\u{7}"]).is_err());
    }

    #[test]
    fn prompt_fields_are_capped_and_cut() {
        let g = guard();
        let rules = ImportRules {
            guard: &g,
            default_region: None,
        };
        let mut fields: BTreeMap<String, String> = (1..MAX_CUSTOM_FIELDS)
            .map(|i| (format!("f{i:02}"), "v".repeat(300)))
            .collect();
        fields.insert("first_name".into(), "not me".into());
        let lead = LeadInput {
            phone: "+12125550100".into(),
            first_name: Some("Ann".into()),
            external_id: Some("crm-1".into()),
            fields,
            ..Default::default()
        };
        let p = lead.validate(&rules).unwrap().prompt_fields();
        assert_eq!(p.len(), MAX_PROMPT_FIELDS);
        assert_eq!(
            p["first_name"], "Ann",
            "a custom field never hides a named one"
        );
        assert_eq!(p["external_id"], "crm-1");
        assert!(!p.contains_key("last_name"));
        assert_eq!(p["f01"].chars().count(), MAX_PROMPT_VALUE_CHARS);
        let bare = LeadInput {
            phone: "+12125550100".into(),
            ..Default::default()
        };
        assert!(bare.validate(&rules).unwrap().prompt_fields().is_empty());
    }

    #[test]
    fn every_bad_row_names_its_column() {
        let g = guard();
        let rules = ImportRules {
            guard: &g,
            default_region: Some("US"),
        };
        let v = |l: LeadInput| l.validate(&rules).map_err(|e| e.0);
        let ok = LeadInput {
            phone: "(212) 555-0100".into(),
            ..Default::default()
        };
        let lead = v(ok.clone()).unwrap();
        assert_eq!(lead.phone, "+12125550100");
        assert!(lead.zones.contains("America/New_York"));
        for (l, col) in [
            (
                LeadInput {
                    phone: "hello".into(),
                    ..Default::default()
                },
                "phone",
            ),
            (
                LeadInput {
                    phone: "+33612345678".into(),
                    ..Default::default()
                },
                "phone",
            ),
            (
                LeadInput {
                    timezone: Some("Mars/Olympus".into()),
                    ..ok.clone()
                },
                "timezone",
            ),
            (
                LeadInput {
                    priority: Some(12),
                    ..ok.clone()
                },
                "priority",
            ),
            (
                LeadInput {
                    agent_id: Some("a b".into()),
                    ..ok.clone()
                },
                "agent_id",
            ),
            (
                LeadInput {
                    first_name: Some("x\r\ny".into()),
                    ..ok.clone()
                },
                "first_name",
            ),
        ] {
            assert_eq!(v(l).unwrap_err(), col);
        }
    }
}
