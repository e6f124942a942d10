//! The abandon ledger: per campaign and UTC calendar day, calls answered
//! by a person (`answered_human`, and `abandoned`, which was answered by a
//! person too) and abandoned calls. Written by the `call.completed` that
//! completes an attempt, in the transaction that applies it, so each call
//! counts once (the consumer's inbox and the attempt's compare-and-set).
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
}

/// A campaign's abandon counts in both windows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Windows {
    /// The UTC calendar day.
    pub today: AbandonCounts,
    /// The last 30 UTC days, today included.
    pub last_30_days: AbandonCounts,
}

/// Counts a completed call in the ledger inside `tx`: live when a person
/// answered (`answered_human` or `abandoned`), abandoned when no agent took
/// it. Other outcomes change nothing.
pub(crate) async fn record(
    tx: &mut Tx,
    dialect: dialstack_common::db::Dialect,
    campaign_id: &str,
    outcome: Outcome,
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    let abandoned = match outcome {
        Outcome::AnsweredHuman => 0,
        Outcome::Abandoned => 1,
        _ => return Ok(()),
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
        "UPDATE abandon_ledger SET live = live + 1, abandoned = abandoned + ? WHERE campaign_id = ? AND day = ?",
    )
    .bind(abandoned)
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
        },
    ))
}

impl Repo {
    /// A campaign's ledger days from `days` days back to today (UTC, `now`
    /// in ms), oldest first; days without live calls are left out.
    pub async fn ledger_days(
        &self,
        campaign_id: &str,
        now: i64,
        days: i64,
    ) -> Result<Vec<LedgerDay>, sqlx::Error> {
        let today = day_of(now);
        let rows = sqlx::query(
            "SELECT day, live, abandoned FROM abandon_ledger
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
                })
            })
            .collect()
    }

    /// Each campaign's counts today and over 30 days (UTC, `now` in ms);
    /// campaigns without live calls are absent.
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
            "SELECT campaign_id, day, live, abandoned FROM abandon_ledger WHERE day > ? AND day <= ?{}",
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
