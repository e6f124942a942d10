//! Team settings (the wrap-up timeout).

use sqlx::Row;

use super::Repo;

/// A team's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Team {
    /// Name.
    pub name: String,
    /// Seconds after which wrap-up ends by itself (`null`: the agent ends it).
    pub wrap_up_timeout_secs: Option<i64>,
}

impl Repo {
    /// Every team with settings.
    pub async fn teams(&self) -> Result<Vec<Team>, sqlx::Error> {
        let rows = sqlx::query("SELECT name, wrap_up_timeout_secs FROM teams ORDER BY name")
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Team {
                    name: r.try_get(0)?,
                    wrap_up_timeout_secs: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// Creates or replaces a team's settings.
    pub async fn put_team(&self, t: &Team) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO teams (name, wrap_up_timeout_secs, updated_at) VALUES (?, ?, ?) {}",
            self.db.dialect.upsert(
                "name",
                &[
                    ("wrap_up_timeout_secs", "new(wrap_up_timeout_secs)"),
                    ("updated_at", "new(updated_at)"),
                ]
            )
        );
        sqlx::query(&sql)
            .bind(&t.name)
            .bind(t.wrap_up_timeout_secs)
            .bind(dialstack_common::now_ms())
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }
}
