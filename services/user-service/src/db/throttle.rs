//! Login throttling counters, one row per key (an account and address pair,
//! an address, an account). An attempt is charged *before* its password is
//! checked, in one conditional statement per counter, so concurrent guesses
//! cannot pass a cap that each of them read as not yet reached; a success or
//! an attempt that was never checked is refunded afterwards.

use sqlx::Row;

use super::Repo;

/// One counter an attempt must pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// The row's key, e.g. `pair:admin|10.0.0.7`.
    pub key: String,
    /// Attempts allowed per window.
    pub cap: i64,
    /// The window (ms); it starts with the first attempt after the last one
    /// ended.
    pub window_ms: i64,
    /// The wait (ms) imposed after the n-th attempt of a window, as
    /// `(n, wait)` steps in increasing `n`, `n` counted from 1; below the
    /// first step no wait, from the last step on its wait.
    pub backoff: Vec<(i64, i64)>,
}

/// Whether an attempt may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Charged: go on, and refund or keep the charge afterwards.
    Charged,
    /// Refused: the cap is reached or the backoff has not passed; retry
    /// after this many ms.
    Refused {
        /// Milliseconds until the gate may open.
        retry_after_ms: i64,
    },
}

/// The SQL value of the wait after attempt `n` (an SQL expression).
fn backoff_sql(n: &str, steps: &[(i64, i64)]) -> String {
    if steps.is_empty() {
        return "0".into();
    }
    let mut sql = format!("CASE WHEN {n} < {} THEN 0", steps[0].0);
    for w in steps.windows(2) {
        sql.push_str(&format!(" WHEN {n} < {} THEN {}", w[1].0, w[0].1));
    }
    sql.push_str(&format!(" ELSE {} END", steps[steps.len() - 1].1));
    sql
}

impl Repo {
    /// Charges one attempt to `gate` if it is open: under its cap for the
    /// window and past its backoff. One conditional update, so that of
    /// concurrent attempts at most the cap are charged.
    pub async fn charge(&self, gate: &Gate) -> Result<Admission, sqlx::Error> {
        // A refusal is final only when the row, read afterwards, shows the
        // gate closed; a miss that the row does not explain is tried again.
        for _ in 0..3 {
            if let Some(admission) = self.charge_once(gate).await? {
                return Ok(admission);
            }
        }
        tracing::warn!(key = %gate.key, "login throttle charge missed three times");
        Ok(Admission::Refused {
            retry_after_ms: 1000,
        })
    }

    async fn charge_once(&self, gate: &Gate) -> Result<Option<Admission>, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let cutoff = now - gate.window_ms;
        sqlx::query(&format!(
            "{} INTO login_throttle (k, window_start, attempts, next_at, trusted_until) VALUES (?, 0, 0, 0, 0)",
            self.db.dialect.insert_ignore()
        ))
        .bind(&gate.key)
        .execute(&self.db.pool)
        .await?;
        // MySQL assigns left to right with the new values of earlier
        // columns: `next_at` reads the old `attempts` and `window_start`,
        // `attempts` the old `window_start`, so `window_start` comes last.
        // An attempt without a wait leaves `next_at` alone: it must not
        // close the gate on a concurrent attempt whose `now` is a little
        // older.
        let wait = format!(
            "CASE WHEN window_start <= ? THEN {first} ELSE {next} END",
            first = backoff_sql("1", &gate.backoff),
            next = backoff_sql("(attempts + 1)", &gate.backoff),
        );
        let sql = format!(
            "UPDATE login_throttle SET
               next_at = CASE WHEN {wait} = 0 THEN next_at ELSE ? + {wait} END,
               attempts = CASE WHEN window_start <= ? THEN 1 ELSE attempts + 1 END,
               window_start = CASE WHEN window_start <= ? THEN ? ELSE window_start END
             WHERE k = ? AND next_at <= ? AND (window_start <= ? OR attempts < ?)"
        );
        let charged = sqlx::query(&sql)
            .bind(cutoff)
            .bind(now)
            .bind(cutoff)
            .bind(cutoff)
            .bind(cutoff)
            .bind(now)
            .bind(&gate.key)
            .bind(now)
            .bind(cutoff)
            .bind(gate.cap)
            .execute(&self.db.pool)
            .await?;
        if charged.rows_affected() == 1 {
            return Ok(Some(Admission::Charged));
        }
        let row =
            sqlx::query("SELECT window_start, next_at, attempts FROM login_throttle WHERE k = ?")
                .bind(&gate.key)
                .fetch_optional(&self.db.pool)
                .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (window_start, next_at, attempts): (i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let now = dialstack_common::now_ms();
        let waiting = next_at > now;
        let capped = window_start > now - gate.window_ms && attempts >= gate.cap;
        if !waiting && !capped {
            return Ok(None);
        }
        let until = if waiting {
            next_at
        } else {
            window_start + gate.window_ms
        };
        Ok(Some(Admission::Refused {
            retry_after_ms: (until - now).max(1),
        }))
    }

    /// Gives back a charge that turned out not to be a failure (the
    /// password was right, or never checked).
    pub async fn refund(&self, key: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE login_throttle SET attempts = attempts - 1 WHERE k = ? AND attempts > 0",
        )
        .bind(key)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// After a successful login: the pair starts afresh and its address is
    /// trusted for the account until `trusted_until` (ms since epoch).
    pub async fn trust(&self, key: &str, trusted_until: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE login_throttle SET attempts = 0, next_at = 0, window_start = 0, trusted_until = ? WHERE k = ?",
        )
        .bind(trusted_until)
        .bind(key)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Whether the pair `key` is trusted now (its address logged in to the
    /// account recently).
    pub async fn trusted(&self, key: &str) -> Result<bool, sqlx::Error> {
        let row = sqlx::query("SELECT trusted_until FROM login_throttle WHERE k = ?")
            .bind(key)
            .fetch_optional(&self.db.pool)
            .await?;
        let until: i64 = match row {
            Some(r) => r.try_get(0)?,
            None => 0,
        };
        Ok(until > dialstack_common::now_ms())
    }

    /// Deletes the counters whose window ended before `before_ms` and that
    /// trust no address any more; returns how many went.
    pub async fn prune_throttle(&self, before_ms: i64) -> Result<u64, sqlx::Error> {
        let now = dialstack_common::now_ms();
        Ok(sqlx::query(
            "DELETE FROM login_throttle WHERE window_start < ? AND next_at < ? AND trusted_until < ?",
        )
        .bind(before_ms)
        .bind(now)
        .bind(now)
        .execute(&self.db.pool)
        .await?
        .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::backoff_sql;

    #[test]
    fn backoff_is_a_case_over_the_steps() {
        assert_eq!(backoff_sql("n", &[]), "0");
        assert_eq!(
            backoff_sql("n", &[(5, 1000), (6, 2000), (7, 4000)]),
            "CASE WHEN n < 5 THEN 0 WHEN n < 6 THEN 1000 WHEN n < 7 THEN 2000 ELSE 4000 END"
        );
    }
}
