//! Retention of CDRs: each campaign's `cdr_retention_days` (from
//! `campaign.updated`, newest version wins), else the global default; a CDR
//! is kept at least as long as its recording (the recording's own retention
//! deletes it first), and its transcript goes with it. Deletes go in small
//! batches of ids, each its own short transaction, so no delete holds a
//! long lock.

use dialstack_common::db::{and_in, Tx};
use sqlx::Row;

use super::Repo;

/// One day in ms.
pub const DAY_MS: i64 = 86_400_000;

/// A campaign's retention, as `campaign.updated` gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignRetention {
    /// The campaign.
    pub campaign_id: String,
    /// Days its CDRs are kept; `None`: the global default.
    pub cdr_retention_days: Option<u32>,
    /// Orders the updates of one campaign (newest wins).
    pub version: i64,
}

impl Repo {
    /// The retention of every campaign that has one of its own.
    pub async fn campaign_retentions(&self) -> Result<Vec<CampaignRetention>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT campaign_id, cdr_retention_days, version FROM campaign_retention \
             WHERE cdr_retention_days IS NOT NULL ORDER BY campaign_id",
        )
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| CampaignRetention {
                campaign_id: r.get(0),
                cdr_retention_days: r
                    .get::<Option<i64>, _>(1)
                    .and_then(|d| u32::try_from(d).ok()),
                version: r.get(2),
            })
            .collect())
    }

    /// Up to `limit` ids of CDRs past retention at `now_ms`: those of
    /// campaigns with their own retention, then (with `default_days`) the
    /// others. A CDR whose recording is still stored is never among them.
    pub async fn expired_cdrs(
        &self,
        now_ms: i64,
        default_days: Option<u32>,
        limit: i64,
    ) -> Result<Vec<String>, sqlx::Error> {
        const NO_RECORDING: &str =
            "NOT EXISTS (SELECT 1 FROM recordings r WHERE r.call_id = c.call_id)";
        let own = self.campaign_retentions().await?;
        let mut out = Vec::new();
        for c in &own {
            let Some(days) = c.cdr_retention_days else {
                continue;
            };
            let left = limit - out.len() as i64;
            if left <= 0 {
                return Ok(out);
            }
            let rows = sqlx::query(&format!(
                "SELECT c.call_id FROM cdrs c WHERE c.campaign_id = ? AND c.started_at < ? AND {NO_RECORDING} \
                 ORDER BY c.started_at LIMIT ?"
            ))
            .bind(c.campaign_id.as_str())
            .bind(now_ms.saturating_sub(i64::from(days) * DAY_MS))
            .bind(left)
            .fetch_all(&self.db.pool)
            .await?;
            out.extend(rows.iter().map(|r| r.get::<String, _>(0)));
        }
        let left = limit - out.len() as i64;
        if let (Some(days), true) = (default_days, left > 0) {
            let sql = format!(
                "SELECT c.call_id FROM cdrs c WHERE c.started_at < ? AND {NO_RECORDING}{} \
                 ORDER BY c.started_at LIMIT ?",
                not_in("c.campaign_id", own.len())
            );
            let mut q = sqlx::query(&sql).bind(now_ms.saturating_sub(i64::from(days) * DAY_MS));
            for c in &own {
                q = q.bind(c.campaign_id.as_str());
            }
            let rows = q.bind(left).fetch_all(&self.db.pool).await?;
            out.extend(rows.iter().map(|r| r.get::<String, _>(0)));
        }
        Ok(out)
    }

    /// Deletes these CDRs (unless a recording appeared meanwhile) and the
    /// transcripts of those that went, in one transaction; returns how many
    /// CDRs went.
    pub async fn delete_cdrs(&self, call_ids: &[String]) -> Result<u64, sqlx::Error> {
        if call_ids.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin().await?;
        let sql = format!(
            "DELETE FROM cdrs WHERE NOT EXISTS (SELECT 1 FROM recordings r WHERE r.call_id = cdrs.call_id){}",
            and_in("call_id", call_ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in call_ids {
            q = q.bind(id.as_str());
        }
        let gone = q.execute(&mut *tx).await?.rows_affected();
        let sql = format!(
            "DELETE FROM transcripts WHERE NOT EXISTS (SELECT 1 FROM cdrs c WHERE c.call_id = transcripts.call_id){}",
            and_in("call_id", call_ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in call_ids {
            q = q.bind(id.as_str());
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(gone)
    }
}

/// ` AND col NOT IN (?, ...)`, or nothing for no values.
fn not_in(col: &str, n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(" AND {col} NOT IN (?{})", ", ?".repeat(n - 1)),
    }
}

/// Stores a campaign's retention inside `tx` unless a newer version is
/// already stored.
pub(super) async fn upsert_retention(
    tx: &mut Tx,
    dialect: dialstack_common::db::Dialect,
    r: &CampaignRetention,
) -> Result<(), sqlx::Error> {
    let upsert = dialect.upsert(
        "campaign_id",
        &[
            (
                "cdr_retention_days",
                "CASE WHEN new(version) >= version THEN new(cdr_retention_days) ELSE cdr_retention_days END",
            ),
            (
                "version",
                "CASE WHEN new(version) >= version THEN new(version) ELSE version END",
            ),
        ],
    );
    sqlx::query(&format!(
        "INSERT INTO campaign_retention (campaign_id, cdr_retention_days, version) VALUES (?, ?, ?) {upsert}"
    ))
    .bind(r.campaign_id.as_str())
    .bind(r.cdr_retention_days.map(i64::from))
    .bind(r.version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
