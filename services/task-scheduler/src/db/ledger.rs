//! The abandon ledger: per campaign and UTC calendar day, calls answered
//! by a person (`answered_human`; `abandoned`, which was answered by a
//! person too; `amd_unsure`, which machine detection could not classify
//! and which went on as a person's) and abandoned calls, and beside them
//! the calls machine detection classified as machines (`machine`) and
//! could not classify (`amd_unsure`), for the report's estimate of people
//! taken for machines ([`AbandonCounts::with_amd_estimate`]). Written by
//! the `call.completed` that completes an attempt, in the transaction that
//! applies it, so each call counts once (the consumer's inbox and the
//! attempt's compare-and-set).
//!
//! Windows: "today" is the UTC calendar day (the UK regulator's day);
//! "30 days" is today and the 29 calendar days before it (the US rolling
//! window, by whole UTC days).

use std::collections::HashMap;

use dialstack_common::db::Tx;
use dialstack_contract::Outcome;
use sqlx::Row;

use super::Repo;
use crate::domain::dialing::{date_of_day, day_of, AbandonCounts};

/// Days in the long window.
pub const WINDOW_DAYS: i64 = 30;

/// One day of a campaign's ledger.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LedgerDay {
    /// The UTC day, `YYYY-MM-DD`.
    pub date: String,
    /// Calls answered by a person.
    pub live: i64,
    /// Of those, abandoned.
    pub abandoned: i64,
    /// `abandoned / live` (0 without live calls).
    pub ratio: f64,
    /// Calls classified as machines (not live).
    pub machine: i64,
    /// Live calls machine detection could not classify.
    pub amd_unsure: i64,
}

/// A campaign's abandon counts in both windows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Windows {
    /// The UTC calendar day.
    pub today: AbandonCounts,
    /// The last 30 UTC days, today included.
    pub last_30_days: AbandonCounts,
}

/// What one call adds to its day: (live, abandoned, machine, amd_unsure).
/// Live when a person answered (`answered_human`, `abandoned`, or
/// `amd_unsure`: the call went on as a person's), abandoned when no agent
/// took it; machines beside. Other outcomes add nothing.
pub fn ledger_increments(outcome: Outcome) -> Option<(i64, i64, i64, i64)> {
    match outcome {
        Outcome::AnsweredHuman => Some((1, 0, 0, 0)),
        Outcome::Abandoned => Some((1, 1, 0, 0)),
        Outcome::AmdUnsure => Some((1, 0, 0, 1)),
        Outcome::AnsweredMachine => Some((0, 0, 1, 0)),
        _ => None,
    }
}

/// Counts a completed call in the ledger inside `tx`
/// ([`ledger_increments`]).
pub(crate) async fn record(
    tx: &mut Tx,
    dialect: dialstack_common::db::Dialect,
    campaign_id: &str,
    outcome: Outcome,
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    let Some((live, abandoned, machine, unsure)) = ledger_increments(outcome) else {
        return Ok(());
    };
    let day = day_of(at_ms);
    sqlx::query(&format!(
        "{} INTO abandon_ledger (campaign_id, day, live, abandoned) VALUES (?, ?, 0, 0)",
        dialect.insert_ignore()
    ))
    .bind(campaign_id)
    .bind(day)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE abandon_ledger SET live = live + ?, abandoned = abandoned + ?, machine = machine + ?,
           amd_unsure = amd_unsure + ? WHERE campaign_id = ? AND day = ?",
    )
    .bind(live)
    .bind(abandoned)
    .bind(machine)
    .bind(unsure)
    .bind(campaign_id)
    .bind(day)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn day_from(
    campaign: bool,
    r: &sqlx::any::AnyRow,
) -> Result<(String, i64, AbandonCounts), sqlx::Error> {
    let off = usize::from(campaign);
    let id: String = if campaign {
        r.try_get(0)?
    } else {
        String::new()
    };
    Ok((
        id,
        r.try_get(off)?,
        AbandonCounts {
            live: r.try_get(off + 1)?,
            abandoned: r.try_get(off + 2)?,
            machine: r.try_get(off + 3)?,
            amd_unsure: r.try_get(off + 4)?,
        },
    ))
}

impl Repo {
    /// A campaign's ledger days from `days` days back to today (UTC, `now`
    /// in ms), oldest first; days without a row (no person and no machine
    /// answered) are left out.
    pub async fn ledger_days(
        &self,
        campaign_id: &str,
        now: i64,
        days: i64,
    ) -> Result<Vec<LedgerDay>, sqlx::Error> {
        let today = day_of(now);
        let rows = sqlx::query(
            "SELECT day, live, abandoned, machine, amd_unsure FROM abandon_ledger
             WHERE campaign_id = ? AND day > ? AND day <= ? ORDER BY day",
        )
        .bind(campaign_id)
        .bind(today - days.max(1))
        .bind(today)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let (_, day, c) = day_from(false, r)?;
                Ok(LedgerDay {
                    date: date_of_day(day),
                    live: c.live,
                    abandoned: c.abandoned,
                    ratio: c.ratio(),
                    machine: c.machine,
                    amd_unsure: c.amd_unsure,
                })
            })
            .collect()
    }

    /// Each campaign's counts today and over 30 days (UTC, `now` in ms);
    /// campaigns without a ledger row in the window are absent.
    pub async fn abandon_windows(
        &self,
        campaign_ids: &[&str],
        now: i64,
    ) -> Result<HashMap<String, Windows>, sqlx::Error> {
        let mut out: HashMap<String, Windows> = HashMap::new();
        if campaign_ids.is_empty() {
            return Ok(out);
        }
        let today = day_of(now);
        let sql = format!(
            "SELECT campaign_id, day, live, abandoned, machine, amd_unsure FROM abandon_ledger WHERE day > ? AND day <= ?{}",
            dialstack_common::db::and_in("campaign_id", campaign_ids.len())
        );
        let mut q = sqlx::query(&sql).bind(today - WINDOW_DAYS).bind(today);
        for id in campaign_ids {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&self.db.pool).await? {
            let (id, day, c) = day_from(true, &r)?;
            let w = out.entry(id).or_default();
            w.last_30_days = w.last_30_days.plus(c);
            if day == today {
                w.today = c;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_count_live_and_machines_beside() {
        assert_eq!(
            ledger_increments(Outcome::AnsweredHuman),
            Some((1, 0, 0, 0))
        );
        assert_eq!(ledger_increments(Outcome::Abandoned), Some((1, 1, 0, 0)));
        assert_eq!(
            ledger_increments(Outcome::AmdUnsure),
            Some((1, 0, 0, 1)),
            "an unsure call went on as a person's"
        );
        assert_eq!(
            ledger_increments(Outcome::AnsweredMachine),
            Some((0, 0, 1, 0))
        );
        for o in [
            Outcome::Busy,
            Outcome::NoAnswer,
            Outcome::Failed,
            Outcome::Rejected,
            Outcome::Canceled,
        ] {
            assert_eq!(ledger_increments(o), None, "{o:?}");
        }
    }
}
