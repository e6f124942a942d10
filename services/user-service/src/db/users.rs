//! Users: accounts, roles, supervisors' teams and password hashes. A role
//! change, a password change or a deletion ends the user's sessions in the
//! same transaction.

use dialstack_common::auth::Role;
use sqlx::Row;

use super::agents::remove_agent;
use super::keys::revoke_access_tokens;
use super::sessions::revoke_sessions;
use super::{join_teams, split_teams, Repo};

/// A stored user.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Id (UUIDv7).
    pub id: String,
    /// Login name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// argon2id PHC string.
    pub password_hash: String,
    /// The teams a supervisor leads (empty for other roles; an agent's
    /// teams are in its profile).
    pub teams: Vec<String>,
}

const USER_COLS: &str = "id, username, role, password_hash, teams";

fn user_from(r: &sqlx::any::AnyRow) -> Option<User> {
    Some(User {
        id: r.get(0),
        username: r.get(1),
        role: Role::parse(&r.get::<String, _>(2))?,
        password_hash: r.get(3),
        teams: split_teams(&r.get::<String, _>(4)),
    })
}

/// A change to a user; `None` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// New role.
    pub role: Option<Role>,
    /// New supervisor teams.
    pub teams: Option<Vec<String>>,
    /// New password hash.
    pub password_hash: Option<String>,
}

/// What an update or delete did.
#[derive(Debug, Clone, PartialEq)]
pub enum UserChange {
    /// Done: the user as it is now (`None` after a delete).
    Done(Option<User>),
    /// No such user.
    Unknown,
    /// Refused: it would leave no admin.
    LastAdmin,
}

impl Repo {
    /// Whether any user has `role`.
    pub async fn has_role(&self, role: Role) -> Result<bool, sqlx::Error> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM users WHERE role = ?")
            .bind(role.as_str())
            .fetch_one(&self.db.pool)
            .await?
            .get(0);
        Ok(n > 0)
    }

    /// Creates the user, or sets the role and password of an existing one.
    pub async fn upsert_user(
        &self,
        username: &str,
        role: Role,
        hash: &str,
    ) -> Result<User, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let sql = format!(
            "INSERT INTO users (id, username, role, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) {}",
            self.db.dialect.upsert(
                "username",
                &[
                    ("role", "new(role)"),
                    ("password_hash", "new(password_hash)"),
                    ("updated_at", "new(updated_at)"),
                ]
            )
        );
        sqlx::query(&sql)
            .bind(&id)
            .bind(username)
            .bind(role.as_str())
            .bind(hash)
            .bind(now)
            .bind(now)
            .execute(&self.db.pool)
            .await?;
        self.user_by_name(username)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// A user by login name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE username = ?"))
            .bind(username)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.as_ref().and_then(user_from))
    }

    /// A user by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.as_ref().and_then(user_from))
    }

    /// Creates a user; `None` when the username is taken.
    pub async fn create_user(
        &self,
        username: &str,
        role: Role,
        hash: &str,
    ) -> Result<Option<User>, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let done = sqlx::query(&format!(
            "{} INTO users (id, username, role, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            self.db.dialect.insert_ignore()
        ))
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(username)
        .bind(role.as_str())
        .bind(hash)
        .bind(now)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        self.user_by_name(username).await
    }

    /// Replaces a user's password hash and ends every session of that user.
    pub async fn set_password(&self, user_id: &str, hash: &str) -> Result<(), sqlx::Error> {
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        sqlx::query("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?")
            .bind(hash)
            .bind(now)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        revoke_sessions(&mut tx, self.db.dialect, user_id, now).await?;
        tx.commit().await
    }

    /// Every user, by username.
    pub async fn users(&self) -> Result<Vec<User>, sqlx::Error> {
        let rows = sqlx::query(&format!("SELECT {USER_COLS} FROM users ORDER BY username"))
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows.iter().filter_map(user_from).collect())
    }

    /// Applies `u` to a user in one transaction. A role or password change
    /// ends every session of the user. Demoting the last admin is refused.
    pub async fn update_user(&self, id: &str, u: &UserUpdate) -> Result<UserChange, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        // Admins first, then the user: every role change takes the locks in
        // the same order, so two of them wait for each other, never deadlock.
        let admins = match u.role {
            Some(_) => self.lock_admins(&mut tx).await?,
            None => Vec::new(),
        };
        let Some(before) = self.lock_user(&mut tx, id).await? else {
            tx.rollback().await?;
            return Ok(UserChange::Unknown);
        };
        let demotes_admin = before.role == Role::Admin && u.role.is_some_and(|r| r != Role::Admin);
        if demotes_admin && !admins.iter().any(|a| a != id) {
            tx.rollback().await?;
            return Ok(UserChange::LastAdmin);
        }
        // Only the fields given are written, so concurrent changes of other
        // fields are not undone.
        let mut sets = vec!["updated_at = ?"];
        if u.role.is_some() {
            sets.push("role = ?");
        }
        if u.teams.is_some() {
            sets.push("teams = ?");
        }
        if u.password_hash.is_some() {
            sets.push("password_hash = ?");
        }
        let sql = format!("UPDATE users SET {} WHERE id = ?", sets.join(", "));
        let mut q = sqlx::query(&sql).bind(now);
        if let Some(r) = u.role {
            q = q.bind(r.as_str());
        }
        if let Some(t) = &u.teams {
            q = q.bind(join_teams(t));
        }
        if let Some(h) = &u.password_hash {
            q = q.bind(h.clone());
        }
        q.bind(id).execute(&mut *tx).await?;
        let role_changed = u.role.is_some_and(|r| r != before.role);
        if role_changed {
            // Agent profiles only belong to agents.
            remove_agent(&mut tx, id, "role_changed", now).await?;
        }
        if role_changed || u.password_hash.is_some() {
            revoke_sessions(&mut tx, self.db.dialect, id, now).await?;
        } else if u.teams.as_ref().is_some_and(|t| *t != before.teams) {
            // Tokens carry the teams; the session goes on with a new token.
            revoke_access_tokens(&mut tx, self.db.dialect, id, now).await?;
        }
        tx.commit().await?;
        Ok(UserChange::Done(self.user_by_id(id).await?))
    }

    /// Deletes a user, its agent profile and its sessions. Deleting the last
    /// admin is refused.
    pub async fn delete_user(&self, id: &str) -> Result<UserChange, sqlx::Error> {
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let admins = self.lock_admins(&mut tx).await?;
        let Some(before) = self.lock_user(&mut tx, id).await? else {
            tx.rollback().await?;
            return Ok(UserChange::Unknown);
        };
        if before.role == Role::Admin && !admins.iter().any(|a| a != id) {
            tx.rollback().await?;
            return Ok(UserChange::LastAdmin);
        }
        remove_agent(&mut tx, id, "user_deleted", now).await?;
        sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        revoke_sessions(&mut tx, self.db.dialect, id, now).await?;
        tx.commit().await?;
        Ok(UserChange::Done(None))
    }

    /// The admins' ids. On MySQL their rows stay locked until `tx` ends, so
    /// two admins demoting each other at once cannot both succeed (SQLite
    /// runs one write transaction at a time).
    async fn lock_admins(
        &self,
        tx: &mut dialstack_common::db::Tx,
    ) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT id FROM users WHERE role = 'admin' ORDER BY id{}",
            self.for_update()
        ))
        .fetch_all(&mut **tx)
        .await?;
        rows.iter().map(|r| r.try_get(0)).collect()
    }

    /// The user, read (and on MySQL locked) inside `tx`.
    async fn lock_user(
        &self,
        tx: &mut dialstack_common::db::Tx,
        id: &str,
    ) -> Result<Option<User>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE id = ?{}",
            self.for_update()
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.as_ref().and_then(user_from))
    }

    /// The user's role now and when its earlier access tokens were revoked
    /// (ms since epoch, if ever); `None` for an unknown user. One query, run
    /// for every authenticated request.
    pub async fn token_standing(
        &self,
        id: &str,
    ) -> Result<Option<(Role, Option<i64>)>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT u.role, r.not_before_ms FROM users u
             LEFT JOIN token_revocations r ON r.user_id = u.id WHERE u.id = ?",
        )
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let role: String = row.try_get(0)?;
        let role = Role::parse(&role)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown role {role:?}").into()))?;
        Ok(Some((role, row.try_get(1)?)))
    }
}
