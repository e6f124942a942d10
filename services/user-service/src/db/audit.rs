//! The audit log of authentication and administration events.

use sqlx::Row;

use super::{clip, Repo};

/// One audit entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When (ms since epoch).
    pub at: i64,
    /// `login_succeeded`, `login_failed`, `login_rate_limited`,
    /// `token_family_revoked`, `logout`.
    pub kind: String,
    /// The user or username concerned.
    pub subject: String,
    /// Client address.
    pub ip: String,
    /// Details (never a secret).
    pub detail: String,
}

impl Repo {
    /// Appends to the audit log.
    pub async fn audit(
        &self,
        kind: &str,
        subject: &str,
        ip: &str,
        detail: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, kind, subject, ip, detail) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(dialstack_common::now_ms())
        .bind(kind)
        .bind(clip(subject, 128))
        .bind(clip(ip, 64))
        .bind(clip(detail, 255))
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// The newest audit entries first.
    pub async fn audit_list(&self, limit: i64) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT at, kind, subject, ip, detail FROM audit_log ORDER BY at DESC, id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    subject: r.try_get(2)?,
                    ip: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }
}
