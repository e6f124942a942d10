//! Do-not-call entries: global or for one campaign, optionally expiring.
//! Checked when a lead is imported and again when it comes up for dialing.

use std::collections::HashSet;

use dialstack_common::db::{Dialect, Tx};
use sqlx::Row;

use super::{marks, Repo};

/// Where an entry applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DncScope {
    /// Every campaign.
    Global,
    /// One campaign.
    Campaign(String),
}

impl DncScope {
    /// The stored form: `global` or the campaign id.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Global => "global",
            Self::Campaign(id) => id,
        }
    }

    /// Reads the stored form.
    pub fn parse(s: &str) -> Self {
        if s == "global" {
            Self::Global
        } else {
            Self::Campaign(s.to_owned())
        }
    }
}

/// One entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DncEntry {
    /// The number, E.164.
    pub phone: String,
    /// `global` or a campaign id.
    pub scope: String,
    /// When it lapses (ms since epoch); absent: never.
    pub expires_at: Option<i64>,
    /// Why it was added.
    pub reason: Option<String>,
    /// Who added it.
    pub created_by: Option<String>,
    /// When it was added (ms since epoch).
    pub created_at: i64,
}

/// Adds (or renews) entries inside `tx` (see [`Repo::add_dnc`]); returns
/// how many rows were written.
pub(crate) async fn insert_dnc(
    tx: &mut Tx,
    dialect: Dialect,
    phones: &[String],
    scope: &DncScope,
    expires_at: Option<i64>,
    reason: Option<&str>,
    by: &str,
) -> Result<u64, sqlx::Error> {
    let now = dialstack_common::now_ms();
    let mut written = 0;
    for chunk in phones.chunks(500) {
        let sql = format!(
            "INSERT INTO dnc (phone, scope, expires_at, reason, created_by, created_at) VALUES {} {}",
            vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", "),
            dialect.upsert(
                "phone, scope",
                &[
                    ("expires_at", "new(expires_at)"),
                    ("reason", "new(reason)"),
                    ("created_by", "new(created_by)"),
                    ("created_at", "new(created_at)"),
                ]
            )
        );
        let mut q = sqlx::query(&sql);
        for p in chunk {
            q = q
                .bind(p.clone())
                .bind(scope.as_str().to_owned())
                .bind(expires_at)
                .bind(reason.map(str::to_owned))
                .bind(by.to_owned())
                .bind(now);
        }
        q.execute(&mut **tx).await?;
        written += chunk.len() as u64;
    }
    Ok(written)
}

impl Repo {
    /// Adds (or renews) entries; returns how many rows were written.
    pub async fn add_dnc(
        &self,
        phones: &[String],
        scope: &DncScope,
        expires_at: Option<i64>,
        reason: Option<&str>,
        by: &str,
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let written = insert_dnc(
            &mut tx,
            self.db.dialect,
            phones,
            scope,
            expires_at,
            reason,
            by,
        )
        .await?;
        tx.commit().await?;
        Ok(written)
    }

    /// The live entries of a number (every scope).
    pub async fn dnc_entries(&self, phone: &str) -> Result<Vec<DncEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT phone, scope, expires_at, reason, created_by, created_at FROM dnc
             WHERE phone = ? AND (expires_at IS NULL OR expires_at > ?) ORDER BY scope",
        )
        .bind(phone)
        .bind(dialstack_common::now_ms())
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DncEntry {
                    phone: r.try_get(0)?,
                    scope: r.try_get(1)?,
                    expires_at: r.try_get(2)?,
                    reason: r.try_get(3)?,
                    created_by: r.try_get(4)?,
                    created_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Removes a number's entry in `scope`; `true` when there was one.
    pub async fn remove_dnc(&self, phone: &str, scope: &DncScope) -> Result<bool, sqlx::Error> {
        let gone = sqlx::query("DELETE FROM dnc WHERE phone = ? AND scope = ?")
            .bind(phone)
            .bind(scope.as_str())
            .execute(&self.db.pool)
            .await?;
        Ok(gone.rows_affected() > 0)
    }

    /// Which of `phones` have a live entry, global or for `campaign_id`.
    pub async fn dnc_hits(
        &self,
        phones: &[&str],
        campaign_id: &str,
    ) -> Result<HashSet<String>, sqlx::Error> {
        let mut hits = HashSet::new();
        let now = dialstack_common::now_ms();
        for chunk in phones.chunks(500) {
            let sql = format!(
                "SELECT phone FROM dnc WHERE phone IN ({}) AND scope IN ('global', ?) AND (expires_at IS NULL OR expires_at > ?)",
                marks(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for p in chunk {
                q = q.bind(p.to_string());
            }
            for r in q
                .bind(campaign_id)
                .bind(now)
                .fetch_all(&self.db.pool)
                .await?
            {
                hits.insert(r.try_get(0)?);
            }
        }
        Ok(hits)
    }
}
