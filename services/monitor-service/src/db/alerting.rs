//! Alert rules, alerts (open and history), silences and the engine lease.
//! An alert's state change and the notifications it causes are written in
//! one transaction, so a crash never loses or doubles a notification.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::Repo;
use crate::domain::lifecycle::{AlertState, Step};
use crate::domain::rules::Rule;
use crate::domain::silence::Matcher;

/// Id of the seed's rule (inserted by migration 5).
pub const SEED_RULE_ID: &str = "seed-call-failure-rate";

/// The seed's rule as stored by migration 5; a unit test keeps it equal to
/// [`Rule::seed`].
pub const SEED_RULE_SPEC: &str = r#"{"name":"CallFailureRateHigh","metric":"failure_rate","op":">","threshold":0.05,"window":"5m","for":"0s","min_calls":20,"severity":"page","labels":{},"group_by":[],"channels":[],"repeat_interval":"4h","enabled":true,"inhibits_campaign_alerts":false}"#;

/// A repository failure the API maps to a status.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A unique name is taken.
    #[error("{0} is taken")]
    Taken(&'static str),
    /// A stored value this code cannot read (never defaulted).
    #[error("corrupt {what}: {why}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// The database failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// A stored rule.
#[derive(Debug, Clone)]
pub struct StoredRule {
    /// Its id.
    pub id: String,
    /// The rule.
    pub rule: Rule,
    /// Created (ms).
    pub created_at: i64,
    /// Last changed (ms).
    pub updated_at: i64,
}

/// An alert, open or past.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AlertRow {
    /// Its id.
    pub id: String,
    /// The rule's id (`alertmanager` for alerts received from Alertmanager).
    pub rule_id: String,
    /// The rule's name (`alertname`).
    pub rule: String,
    /// `campaign=k1`, or empty for an ungrouped rule.
    pub group_key: String,
    /// `pending`, `firing` or `resolved`.
    #[schema(value_type = String)]
    #[serde(serialize_with = "state_name")]
    pub state: AlertState,
    /// All labels.
    pub labels: BTreeMap<String, String>,
    /// Severity.
    pub severity: String,
    /// The last value measured.
    pub value: f64,
    /// The rule's threshold.
    pub threshold: f64,
    /// When the condition started to hold (ms).
    pub started_at: i64,
    /// When it fired (ms).
    pub fired_at: Option<i64>,
    /// When it was resolved (ms).
    pub resolved_at: Option<i64>,
    /// When it was last notified (ms).
    pub last_notified_at: Option<i64>,
}

fn state_name<S: serde::Serializer>(s: &AlertState, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.as_str())
}

const ALERT_COLUMNS: &str =
    "id, rule_id, rule_name, group_key, state, labels, severity, value, threshold,
     started_at, fired_at, resolved_at, last_notified_at";

fn alert_row(r: &AnyRow) -> Result<AlertRow, RepoError> {
    let state: String = r.try_get(4)?;
    let labels = super::text_column(r, 5)?;
    Ok(AlertRow {
        id: r.try_get(0)?,
        rule_id: r.try_get(1)?,
        rule: r.try_get(2)?,
        group_key: r.try_get(3)?,
        state: AlertState::parse(&state).ok_or_else(|| RepoError::Corrupt {
            what: "alert state",
            why: state.clone(),
        })?,
        labels: serde_json::from_str(&labels).map_err(|e| RepoError::Corrupt {
            what: "alert labels",
            why: e.to_string(),
        })?,
        severity: r.try_get(6)?,
        value: r.try_get(7)?,
        threshold: r.try_get(8)?,
        started_at: r.try_get(9)?,
        fired_at: r.try_get(10)?,
        resolved_at: r.try_get(11)?,
        last_notified_at: r.try_get(12)?,
    })
}

/// A silence.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SilenceRow {
    /// Its id.
    pub id: String,
    /// Labels an alert must match to be silenced.
    pub matchers: Vec<Matcher>,
    /// Why.
    pub comment: String,
    /// Who created it (user id).
    pub created_by: String,
    /// From (ms).
    pub starts_at: i64,
    /// Until (ms).
    pub ends_at: i64,
}

/// One evaluation's change to one alert.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// The rule's id.
    pub rule_id: &'a str,
    /// The rule's name.
    pub rule_name: &'a str,
    /// Group key.
    pub group_key: &'a str,
    /// Labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Severity.
    pub severity: &'a str,
    /// Value measured.
    pub value: f64,
    /// Threshold.
    pub threshold: f64,
    /// What happens.
    pub step: Step,
    /// The open alert, when there is one.
    pub open: Option<&'a AlertRow>,
    /// Notifications to enqueue in the same transaction: (channel id,
    /// notification kind, message JSON).
    pub notifications: Vec<(String, &'static str, String)>,
}

fn open_key(rule_id: &str, group_key: &str) -> String {
    let mut k = format!("{rule_id}|{group_key}");
    // The unique column is 240 characters; long group keys are hashed down.
    if k.len() > 240 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        group_key.hash(&mut h);
        k = format!("{rule_id}|#{:016x}", h.finish());
    }
    k
}

impl Repo {
    /// Stores a new rule.
    pub async fn insert_rule(&self, rule: &Rule) -> Result<StoredRule, RepoError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = dialstack_common::now_ms();
        let r = sqlx::query(
            "INSERT INTO alert_rules (id, name, spec, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&rule.name)
        .bind(rule.to_json().to_string())
        .bind(now)
        .bind(now)
        .execute(&self.db.pool)
        .await;
        match r {
            Err(e) if is_unique_violation(&e) => Err(RepoError::Taken("name")),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(StoredRule {
                id,
                rule: rule.clone(),
                created_at: now,
                updated_at: now,
            }),
        }
    }

    fn rule_row(r: &AnyRow) -> Result<StoredRule, RepoError> {
        let spec = super::text_column(r, 1)?;
        let v: serde_json::Value = serde_json::from_str(&spec).map_err(|e| RepoError::Corrupt {
            what: "rule",
            why: e.to_string(),
        })?;
        Ok(StoredRule {
            id: r.try_get(0)?,
            rule: Rule::from_json(&v).map_err(|e| RepoError::Corrupt {
                what: "rule",
                why: e.to_string(),
            })?,
            created_at: r.try_get(2)?,
            updated_at: r.try_get(3)?,
        })
    }

    /// Every rule, by name.
    pub async fn rules(&self) -> Result<Vec<StoredRule>, RepoError> {
        sqlx::query("SELECT id, spec, created_at, updated_at FROM alert_rules ORDER BY name")
            .fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(Self::rule_row)
            .collect()
    }

    /// One rule.
    pub async fn rule(&self, id: &str) -> Result<Option<StoredRule>, RepoError> {
        sqlx::query("SELECT id, spec, created_at, updated_at FROM alert_rules WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?
            .as_ref()
            .map(Self::rule_row)
            .transpose()
    }

    /// Replaces a rule; `false` when there is no such rule.
    pub async fn update_rule(&self, id: &str, rule: &Rule) -> Result<bool, RepoError> {
        let r =
            sqlx::query("UPDATE alert_rules SET name = ?, spec = ?, updated_at = ? WHERE id = ?")
                .bind(&rule.name)
                .bind(rule.to_json().to_string())
                .bind(dialstack_common::now_ms())
                .bind(id)
                .execute(&self.db.pool)
                .await;
        match r {
            Err(e) if is_unique_violation(&e) => Err(RepoError::Taken("name")),
            Err(e) => Err(e.into()),
            Ok(done) => Ok(done.rows_affected() == 1),
        }
    }

    /// Deletes a rule and closes its open alerts (unnotified: the rule
    /// that would judge them is gone); `false` when there is no such rule.
    pub async fn delete_rule(&self, id: &str) -> Result<bool, RepoError> {
        let mut tx = self.db.begin().await?;
        let done = sqlx::query("DELETE FROM alert_rules WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let now = dialstack_common::now_ms();
        sqlx::query(
            "UPDATE alerts SET state = 'resolved', open_key = NULL, resolved_at = ?, updated_at = ?
             WHERE rule_id = ? AND open_key IS NOT NULL",
        )
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Pending and firing alerts.
    pub async fn open_alerts(&self) -> Result<Vec<AlertRow>, RepoError> {
        sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE open_key IS NOT NULL ORDER BY started_at"
        ))
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(alert_row)
        .collect()
    }

    /// Alerts, newest first, optionally in one state.
    pub async fn alerts(
        &self,
        state: Option<AlertState>,
        limit: i64,
    ) -> Result<Vec<AlertRow>, RepoError> {
        let mut sql = format!("SELECT {ALERT_COLUMNS} FROM alerts");
        if state.is_some() {
            sql.push_str(" WHERE state = ?");
        }
        sql.push_str(" ORDER BY updated_at DESC, id DESC LIMIT ?");
        let mut q = sqlx::query(&sql);
        if let Some(s) = state {
            q = q.bind(s.as_str());
        }
        q.bind(limit)
            .fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(alert_row)
            .collect()
    }

    /// Open alerts by (rule name, state), for `dialstack_alerts`.
    pub async fn open_alert_counts(&self) -> Result<Vec<(String, String, i64)>, RepoError> {
        Ok(sqlx::query(
            "SELECT rule_name, state, COUNT(*) FROM alerts WHERE open_key IS NOT NULL
             GROUP BY rule_name, state",
        )
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Writes one evaluation's change to one alert and its notifications,
    /// in one transaction. `false` when another writer changed the alert
    /// first (nothing written).
    pub async fn apply_change(&self, c: &Change<'_>) -> Result<bool, RepoError> {
        let now = dialstack_common::now_ms();
        let notified = (!c.notifications.is_empty()).then_some(now);
        let mut tx = self.db.begin().await?;
        let mut alert_id = c.open.map(|o| o.id.clone());
        let written = match (c.step, c.open) {
            (Step::OpenPending | Step::OpenFiring, None) => {
                let firing = c.step == Step::OpenFiring;
                let id = uuid::Uuid::now_v7().to_string();
                let r = sqlx::query(&format!(
                    "INSERT INTO alerts ({ALERT_COLUMNS}, open_key, updated_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)"
                ))
                .bind(&id)
                .bind(c.rule_id)
                .bind(c.rule_name)
                .bind(c.group_key)
                .bind(if firing { "firing" } else { "pending" })
                .bind(serde_json::to_string(c.labels).unwrap_or_default())
                .bind(c.severity)
                .bind(c.value)
                .bind(c.threshold)
                .bind(now)
                .bind(firing.then_some(now))
                .bind(notified)
                .bind(open_key(c.rule_id, c.group_key))
                .bind(now)
                .execute(&mut *tx)
                .await;
                alert_id = Some(id);
                match r {
                    Err(e) if is_unique_violation(&e) => false,
                    Err(e) => return Err(e.into()),
                    Ok(_) => true,
                }
            }
            (Step::Drop, Some(open)) => {
                // A pending alert nobody heard of leaves no history.
                sqlx::query("DELETE FROM alerts WHERE id = ? AND state = 'pending'")
                    .bind(&open.id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1
            }
            (step, Some(open)) => {
                let last = notified.or(open.last_notified_at);
                let q = match step {
                    Step::Keep => sqlx::query("UPDATE alerts SET value = ? WHERE id = ? AND state = ?")
                        .bind(c.value),
                    Step::Fire => sqlx::query(
                        "UPDATE alerts SET value = ?, state = 'firing', fired_at = ?, last_notified_at = ?,
                         updated_at = ? WHERE id = ? AND state = ?",
                    )
                    .bind(c.value)
                    .bind(now)
                    .bind(last)
                    .bind(now),
                    Step::Repeat => sqlx::query(
                        "UPDATE alerts SET value = ?, last_notified_at = ? WHERE id = ? AND state = ?",
                    )
                    .bind(c.value)
                    .bind(last),
                    Step::Resolve => sqlx::query(
                        "UPDATE alerts SET value = ?, state = 'resolved', open_key = NULL, resolved_at = ?,
                         last_notified_at = ?, updated_at = ? WHERE id = ? AND state = ?",
                    )
                    .bind(c.value)
                    .bind(now)
                    .bind(last)
                    .bind(now),
                    Step::OpenPending | Step::OpenFiring | Step::Drop => return Ok(false),
                };
                q.bind(&open.id)
                    .bind(open.state.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1
            }
            _ => false,
        };
        if !written {
            return Ok(false);
        }
        for (channel, kind, message) in &c.notifications {
            super::notify::enqueue(&mut tx, channel, alert_id.as_deref(), kind, message).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Stores a silence.
    pub async fn insert_silence(&self, s: &SilenceRow) -> Result<(), RepoError> {
        sqlx::query(
            "INSERT INTO silences (id, matchers, comment, created_by, starts_at, ends_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(serde_json::to_string(&s.matchers).unwrap_or_default())
        .bind(&s.comment)
        .bind(&s.created_by)
        .bind(s.starts_at)
        .bind(s.ends_at)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Silences in force at `now`, or (with `all`) every silence not yet
    /// expired for more than a day, newest first.
    pub async fn silences(&self, now: i64, all: bool) -> Result<Vec<SilenceRow>, RepoError> {
        let (sql, since) = if all {
            (
                "SELECT id, matchers, comment, created_by, starts_at, ends_at FROM silences
                 WHERE ends_at > ? ORDER BY starts_at DESC LIMIT 500",
                now - 86_400_000,
            )
        } else {
            (
                "SELECT id, matchers, comment, created_by, starts_at, ends_at FROM silences
                 WHERE ends_at > ? AND starts_at <= ? ORDER BY starts_at DESC LIMIT 500",
                now,
            )
        };
        let mut q = sqlx::query(sql).bind(since);
        if !all {
            q = q.bind(now);
        }
        q.fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|r| {
                let m = super::text_column(r, 1)?;
                Ok(SilenceRow {
                    id: r.try_get(0)?,
                    matchers: serde_json::from_str(&m).map_err(|e| RepoError::Corrupt {
                        what: "silence matchers",
                        why: e.to_string(),
                    })?,
                    comment: r.try_get(2)?,
                    created_by: r.try_get(3)?,
                    starts_at: r.try_get(4)?,
                    ends_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Ends a silence now; `false` when there is no such silence in force.
    pub async fn expire_silence(&self, id: &str) -> Result<bool, RepoError> {
        let now = dialstack_common::now_ms();
        Ok(
            sqlx::query("UPDATE silences SET ends_at = ? WHERE id = ? AND ends_at > ?")
                .bind(now)
                .bind(id)
                .bind(now)
                .execute(&self.db.pool)
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// Takes the lease `name` for `holder` until `now + ttl_ms`, or renews
    /// it; `true` when `holder` holds it.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let inserted = sqlx::query(&format!(
            "{} INTO leases (name, holder, until_ms) VALUES (?, ?, ?)",
            self.db.dialect.insert_ignore()
        ))
        .bind(name)
        .bind(holder)
        .bind(now + ttl_ms)
        .execute(&self.db.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(true);
        }
        let taken = sqlx::query(
            "UPDATE leases SET holder = ?, until_ms = ? WHERE name = ? AND (holder = ? OR until_ms < ?)",
        )
        .bind(holder)
        .bind(now + ttl_ms)
        .bind(name)
        .bind(holder)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    /// Gives the lease up so another replica takes over at once.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE leases SET until_ms = 0 WHERE name = ? AND holder = ?")
            .bind(name)
            .bind(holder)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_seed_is_the_seed() {
        let v: serde_json::Value = serde_json::from_str(SEED_RULE_SPEC).unwrap();
        assert_eq!(Rule::from_json(&v).unwrap(), Rule::seed());
        assert!(!SEED_RULE_SPEC.contains(';'), "migrations split on ;");
        let seed = super::super::MIGRATIONS
            .iter()
            .find(|m| m.version == 5)
            .unwrap();
        assert!(seed.sql.contains(SEED_RULE_SPEC) && seed.sql.contains(SEED_RULE_ID));
    }
}
