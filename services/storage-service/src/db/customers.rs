//! Customer profiles. A customer belongs to a scope (the team of the
//! campaign or supervisor that created them; the empty scope is "no team",
//! seen by admins and services only), has one or more numbers (each number
//! belongs to at most one customer per scope), an optional external id (the
//! operator's CRM id, unique per scope), typed custom fields, tags, consent
//! flags and a version for optimistic locking.
//!
//! # Merging `customer.upserted`
//! A lead import sends the number, the campaign's team and what the row
//! carried. The customer it updates is, in order:
//! 1. the customer with that external id in that scope, if the event has one;
//! 2. else the customer who has that number in that scope, unless the event
//!    has an external id and that customer already has another one;
//! 3. else a new customer.
//!
//! The number then belongs to that customer (the CRM's id wins: a number
//! given with an external id leaves any other customer that held it). A
//! customer left with no number and no external id by such a move can no
//! longer be told apart from the one that took the number: it is absorbed
//! (its name and fields fill what the other lacks, as an event of its
//! `source_at` would, its tags and calls move over, and it is deleted). An
//! event at least as new as the profile's newest source (`source_at`, the
//! event's time or the last edit through the API) overwrites the name and
//! the fields it gives; an older one only fills what is missing. So the
//! result does not depend on the order in which events arrive, and applying
//! one twice changes nothing.

use std::collections::BTreeMap;

use dialstack_common::db::{and_in, Tx};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::Repo;

/// Most numbers per customer.
pub const MAX_PHONES: usize = 10;
/// Most tags per customer.
pub const MAX_TAGS: usize = 20;
/// Most custom fields per customer.
pub const MAX_FIELDS: usize = 50;
/// Longest stored form of the custom fields (the column's size).
pub const MAX_FIELDS_JSON: usize = 8000;
/// Longest name.
pub const MAX_NAME: usize = 200;

/// A custom field's value, typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldValue {
    /// Text (at most 1,000 characters).
    String(String),
    /// A finite number.
    Number(f64),
    /// A calendar date, `YYYY-MM-DD`.
    Date(String),
    /// True or false.
    Bool(bool),
}

/// Consent the customer gave or withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Consent {
    /// Calls to this customer may be recorded.
    pub recording_allowed: bool,
    /// The customer asked not to receive marketing.
    pub marketing_opt_out: bool,
}

impl Default for Consent {
    fn default() -> Self {
        Self {
            recording_allowed: true,
            marketing_opt_out: false,
        }
    }
}

/// A customer profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Customer {
    /// Id (UUIDv7).
    pub id: String,
    /// The team whose customer this is; absent: no team (admins only).
    pub team: Option<String>,
    /// The operator's id for this customer, unique per team.
    pub external_id: Option<String>,
    /// Full name ("" when unknown).
    pub name: String,
    /// Numbers, E.164, the primary first.
    pub phones: Vec<String>,
    /// Typed custom fields.
    #[schema(value_type = Object)]
    pub fields: BTreeMap<String, FieldValue>,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Consent flags.
    pub consent: Consent,
    /// Created (ms since epoch).
    pub created_at: i64,
    /// Last changed (ms since epoch).
    pub updated_at: i64,
    /// Incremented by every change; `If-Match` takes it.
    pub version: i64,
}

/// What a new customer is made of (already validated).
#[derive(Debug, Clone, Default)]
pub struct NewCustomer {
    /// Scope: the team, or "" for none.
    pub scope: String,
    /// External id.
    pub external_id: Option<String>,
    /// Name.
    pub name: String,
    /// Numbers, the primary first (at least one).
    pub phones: Vec<String>,
    /// Custom fields.
    pub fields: BTreeMap<String, FieldValue>,
    /// Tags.
    pub tags: Vec<String>,
    /// Consent.
    pub consent: Consent,
}

/// A change to a customer (already validated); `None` leaves a part as is.
#[derive(Debug, Clone, Default)]
pub struct CustomerPatch {
    /// New external id (`Some(None)` removes it).
    pub external_id: Option<Option<String>>,
    /// New name.
    pub name: Option<String>,
    /// New numbers, the primary first (replaces the list).
    pub phones: Option<Vec<String>>,
    /// Fields to set (`Some`) or remove (`None`).
    pub fields: BTreeMap<String, Option<FieldValue>>,
    /// New tags (replaces the list).
    pub tags: Option<Vec<String>>,
    /// New recording consent.
    pub recording_allowed: Option<bool>,
    /// New marketing opt-out.
    pub marketing_opt_out: Option<bool>,
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum CustomerError {
    /// No such customer.
    #[error("no such customer")]
    NotFound,
    /// `If-Match` is not the current version.
    #[error("the customer is at version {current}")]
    Stale {
        /// The current version.
        current: i64,
    },
    /// A number already belongs to another customer of the scope.
    #[error("{phone} already belongs to customer {owner}")]
    PhoneTaken {
        /// The number.
        phone: String,
        /// Its customer.
        owner: String,
    },
    /// The external id already belongs to another customer of the scope.
    #[error("external_id already belongs to customer {owner}")]
    ExternalTaken {
        /// Its customer.
        owner: String,
    },
    /// The custom fields would not fit.
    #[error("fields: at most {MAX_FIELDS_JSON} characters in all")]
    TooLarge,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Who may see which customers.
#[derive(Debug, Clone, Default)]
pub enum Visibility {
    /// Every customer (admins, services).
    #[default]
    All,
    /// Customers of these teams (supervisors).
    Teams(Vec<String>),
    /// Customers with a call bridged to this agent.
    Agent(String),
}

impl Visibility {
    fn condition(&self) -> (String, Vec<&str>) {
        match self {
            Self::All => (String::new(), Vec::new()),
            Self::Teams(teams) => (
                and_in("c.scope", teams.len()),
                teams.iter().map(String::as_str).collect(),
            ),
            Self::Agent(agent) => (
                " AND EXISTS (SELECT 1 FROM cdrs d WHERE d.customer_id = c.id AND d.agent_id = ?)"
                    .to_owned(),
                vec![agent.as_str()],
            ),
        }
    }
}

/// Filters of a customer search; they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct CustomerQuery {
    /// Has this number.
    pub phone: Option<String>,
    /// Has this external id (in any scope the caller sees).
    pub external_id: Option<String>,
    /// Name starts with this, ignoring case.
    pub name_prefix: Option<String>,
    /// Has this tag.
    pub tag: Option<String>,
    /// Ids after this one.
    pub after: Option<String>,
    /// Who is asking.
    pub visibility: Visibility,
    /// At most this many.
    pub limit: i64,
}

/// The form of a name that prefix search compares.
pub fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

const COLS: &str = "c.id, c.scope, c.external_id, c.name, c.fields, c.tags, c.recording_allowed, c.marketing_opt_out, c.created_at, c.updated_at, c.version, c.primary_phone";

fn customer_from(r: &sqlx::any::AnyRow) -> Customer {
    let scope: String = r.get(1);
    let fields: String = r.get(4);
    let tags: String = r.get(5);
    let primary: Option<String> = r.get(11);
    Customer {
        id: r.get(0),
        team: (!scope.is_empty()).then_some(scope),
        external_id: r.get(2),
        name: r.get(3),
        phones: primary.into_iter().collect(),
        fields: serde_json::from_str(&fields).unwrap_or_default(),
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        consent: Consent {
            recording_allowed: r.get::<i64, _>(6) != 0,
            marketing_opt_out: r.get::<i64, _>(7) != 0,
        },
        created_at: r.get(8),
        updated_at: r.get(9),
        version: r.get(10),
    }
}

/// The stored form of the fields; callers have checked the size.
fn fields_json(fields: &BTreeMap<String, FieldValue>) -> String {
    serde_json::to_string(fields).unwrap_or_else(|_| "{}".into())
}

fn tags_json(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}

/// The least string greater than every string starting with `prefix`:
/// its last character moved one up (a prefix is never empty here).
fn prefix_end(prefix: &str) -> String {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return chars.into_iter().collect();
        }
    }
    // Only unencodable successors: no upper bound is tighter than this.
    char::MAX.to_string().repeat(4)
}

/// What `customer.upserted` gives, ready to merge.
#[derive(Debug, Clone)]
pub struct Upserted<'a> {
    /// Scope: the campaign's team, or "".
    pub scope: &'a str,
    /// The number, E.164.
    pub phone: &'a str,
    /// External id.
    pub external_id: Option<&'a str>,
    /// Name, when the row had one.
    pub name: Option<String>,
    /// Other columns, as text fields.
    pub fields: BTreeMap<String, FieldValue>,
    /// The event's time (ms since epoch).
    pub at_ms: i64,
}

impl Repo {
    /// Creates a customer; its numbers link the calls already made to them.
    pub async fn create_customer(&self, new: &NewCustomer) -> Result<Customer, CustomerError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        if let Some(taken) = conflict_of(&mut tx, new).await? {
            return Err(taken);
        }
        let written = async {
            insert_customer(&mut tx, &id, new, now, now).await?;
            for phone in &new.phones {
                add_phone(&mut tx, &new.scope, phone, &id).await?;
            }
            set_tags(&mut tx, &id, &new.tags).await?;
            tx.commit().await
        }
        .await;
        match written {
            Ok(()) => {}
            // A racing create took the number or the id between our check
            // and our insert; report it as the check would have.
            Err(e) if is_unique_violation(&e) => {
                let mut tx = self.db.begin().await?;
                return Err(conflict_of(&mut tx, new)
                    .await?
                    .unwrap_or(CustomerError::Db(e)));
            }
            Err(e) => return Err(e.into()),
        }
        self.customer(&id).await?.ok_or(CustomerError::NotFound)
    }

    /// One customer, with all their numbers.
    pub async fn customer(&self, id: &str) -> Result<Option<Customer>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM customers c WHERE c.id = ?"))
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        let Some(mut c) = row.as_ref().map(customer_from) else {
            return Ok(None);
        };
        self.fill_phones(std::slice::from_mut(&mut c)).await?;
        Ok(Some(c))
    }

    /// Whether `who` may see customer `id` (which exists).
    pub async fn customer_visible(&self, id: &str, who: &Visibility) -> Result<bool, sqlx::Error> {
        let (cond, binds) = who.condition();
        let sql = format!("SELECT 1 FROM customers c WHERE c.id = ?{cond}");
        let mut q = sqlx::query(&sql).bind(id);
        for b in binds {
            q = q.bind(b);
        }
        Ok(q.fetch_optional(&self.db.pool).await?.is_some())
    }

    /// Customers matching `q`, in id order after its cursor.
    pub async fn search_customers(&self, q: &CustomerQuery) -> Result<Vec<Customer>, sqlx::Error> {
        let mut sql = format!("SELECT {COLS} FROM customers c WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        if let Some(phone) = &q.phone {
            sql.push_str(
                " AND c.id IN (SELECT p.customer_id FROM customer_phones p WHERE p.phone = ?)",
            );
            binds.push(phone.clone());
        }
        if let Some(tag) = &q.tag {
            sql.push_str(
                " AND c.id IN (SELECT t.customer_id FROM customer_tags t WHERE t.tag = ?)",
            );
            binds.push(tag.clone());
        }
        if let Some(ext) = &q.external_id {
            sql.push_str(" AND c.external_id = ?");
            binds.push(ext.clone());
        }
        if let Some(prefix) = &q.name_prefix {
            // Range form of LIKE 'p%' with no wildcard to escape.
            sql.push_str(" AND c.name_key >= ? AND c.name_key < ?");
            let lo = name_key(prefix);
            let hi = prefix_end(&lo);
            binds.push(lo);
            binds.push(hi);
        }
        if let Some(after) = &q.after {
            sql.push_str(" AND c.id > ?");
            binds.push(after.clone());
        }
        let (cond, vis) = q.visibility.condition();
        sql.push_str(&cond);
        sql.push_str(" ORDER BY c.id LIMIT ?");
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b.as_str());
        }
        for b in vis {
            query = query.bind(b);
        }
        let rows = query.bind(q.limit).fetch_all(&self.db.pool).await?;
        let mut out: Vec<Customer> = rows.iter().map(customer_from).collect();
        self.fill_phones(&mut out).await?;
        Ok(out)
    }

    /// Reads the numbers of `customers`, the primary first.
    async fn fill_phones(&self, customers: &mut [Customer]) -> Result<(), sqlx::Error> {
        if customers.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT customer_id, phone FROM customer_phones WHERE 1 = 1{} ORDER BY customer_id, phone",
            and_in("customer_id", customers.len())
        );
        let mut q = sqlx::query(&sql);
        for c in customers.iter() {
            q = q.bind(c.id.as_str());
        }
        let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in q.fetch_all(&self.db.pool).await? {
            all.entry(row.get(0)).or_default().push(row.get(1));
        }
        for c in customers {
            let primary = c.phones.first().cloned();
            let mut phones = all.remove(&c.id).unwrap_or_default();
            if let Some(p) = primary {
                phones.retain(|x| *x != p);
                phones.insert(0, p);
            }
            c.phones = phones;
        }
        Ok(())
    }

    /// Changes a customer whose version is `expected`.
    pub async fn patch_customer(
        &self,
        id: &str,
        expected: i64,
        patch: &CustomerPatch,
    ) -> Result<Customer, CustomerError> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM customers c WHERE c.id = ?{}",
            lock_clause(self.db.dialect)
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut c) = row.as_ref().map(customer_from) else {
            return Err(CustomerError::NotFound);
        };
        if c.version != expected {
            return Err(CustomerError::Stale { current: c.version });
        }
        let scope = c.team.clone().unwrap_or_default();
        if let Some(ext) = &patch.external_id {
            if let Some(ext) = ext {
                if let Some(owner) = by_external(&mut tx, &scope, ext).await? {
                    if owner != id {
                        return Err(CustomerError::ExternalTaken { owner });
                    }
                }
            }
            c.external_id = ext.clone();
        }
        if let Some(name) = &patch.name {
            c.name = name.clone();
        }
        for (k, v) in &patch.fields {
            match v {
                Some(v) => c.fields.insert(k.clone(), v.clone()),
                None => c.fields.remove(k),
            };
        }
        if let Some(tags) = &patch.tags {
            c.tags = tags.clone();
            set_tags(&mut tx, id, tags).await?;
        }
        if let Some(v) = patch.recording_allowed {
            c.consent.recording_allowed = v;
        }
        if let Some(v) = patch.marketing_opt_out {
            c.consent.marketing_opt_out = v;
        }
        let mut primary = c.phones.first().cloned();
        if let Some(phones) = &patch.phones {
            for phone in phones {
                if let Some(owner) = phone_owner(&mut tx, &scope, phone).await? {
                    if owner != id {
                        return Err(CustomerError::PhoneTaken {
                            phone: phone.clone(),
                            owner,
                        });
                    }
                }
            }
            let replaced = async {
                sqlx::query("DELETE FROM customer_phones WHERE customer_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                for phone in phones {
                    add_phone(&mut tx, &scope, phone, id).await?;
                }
                Ok::<_, sqlx::Error>(())
            }
            .await;
            match replaced {
                Ok(()) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(CustomerError::Stale { current: expected })
                }
                Err(e) => return Err(e.into()),
            }
            primary = phones.first().cloned();
        }
        let fields = fields_json(&c.fields);
        if fields.len() > MAX_FIELDS_JSON {
            return Err(CustomerError::TooLarge);
        }
        let now = dialstack_common::now_ms();
        let updated = sqlx::query(
            "UPDATE customers SET external_id = ?, name = ?, name_key = ?, primary_phone = ?, fields = ?, tags = ?, \
             recording_allowed = ?, marketing_opt_out = ?, source_at = ?, updated_at = ?, version = version + 1 \
             WHERE id = ? AND version = ?",
        )
        .bind(c.external_id.as_deref())
        .bind(c.name.as_str())
        .bind(name_key(&c.name))
        .bind(primary.as_deref())
        .bind(fields)
        .bind(tags_json(&c.tags))
        .bind(i64::from(c.consent.recording_allowed))
        .bind(i64::from(c.consent.marketing_opt_out))
        .bind(now)
        .bind(now)
        .bind(id)
        .bind(expected)
        .execute(&mut *tx)
        .await;
        match updated {
            Ok(r) if r.rows_affected() == 1 => {}
            Ok(_) => {
                return Err(CustomerError::Stale {
                    current: expected + 1,
                })
            }
            Err(e) if is_unique_violation(&e) => {
                return Err(CustomerError::Stale {
                    current: expected + 1,
                })
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        self.customer(id).await?.ok_or(CustomerError::NotFound)
    }

    /// Deletes a customer's profile: their numbers, tags and row; their
    /// calls stay, unlinked. With `erase`, their calls also lose the number,
    /// their transcripts and what the IVR gathered (the statistics stay:
    /// times, outcome, quality, agent) and the caller has deleted their
    /// recordings first ([`Self::customer_recordings`]).
    /// Audited either way. Returns how many calls were changed.
    pub async fn delete_customer(
        &self,
        id: &str,
        erase: bool,
        actor: &str,
        recordings_deleted: u64,
    ) -> Result<u64, CustomerError> {
        let mut tx = self.db.begin().await?;
        let gone = sqlx::query("DELETE FROM customers WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Err(CustomerError::NotFound);
        }
        for table in ["customer_phones", "customer_tags"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE customer_id = ?"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if erase {
            // The callee's words, and what they keyed in, are personal data.
            sqlx::query(
                "DELETE FROM transcripts WHERE call_id IN (SELECT call_id FROM cdrs WHERE customer_id = ?)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let sql = if erase {
            "UPDATE cdrs SET phone = '', customer_id = NULL, ivr = NULL, ivr_result = NULL WHERE customer_id = ?"
        } else {
            "UPDATE cdrs SET customer_id = NULL WHERE customer_id = ?"
        };
        let calls = sqlx::query(sql)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let action = if erase {
            "customer.erase"
        } else {
            "customer.delete"
        };
        let detail = serde_json::json!({
            "calls": calls,
            "recordings_deleted": recordings_deleted,
        });
        audit(&mut tx, actor, action, id, &detail.to_string()).await?;
        tx.commit().await?;
        Ok(calls)
    }

    /// The recordings of a customer's calls: (call id, URL), at most `limit`.
    pub async fn customer_recordings(
        &self,
        id: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT r.call_id, r.url FROM recordings r JOIN cdrs c ON c.call_id = r.call_id \
             WHERE c.customer_id = ? ORDER BY r.call_id LIMIT ?",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Deletes the row of a recording whose object is gone (erasure).
    pub async fn forget_recording(&self, call_id: &str, url: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM recordings WHERE call_id = ? AND url = ?")
            .bind(call_id)
            .bind(url)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// The audit trail of one subject (e.g. a customer id), oldest first.
    pub async fn audit_of(&self, subject: &str) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT at, actor, action, subject, detail FROM storage_audit WHERE subject = ? ORDER BY at, id",
        )
        .bind(subject)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                at: r.get(0),
                actor: r.get(1),
                action: r.get(2),
                subject: r.get(3),
                detail: serde_json::from_str(&r.get::<String, _>(4)).unwrap_or_default(),
            })
            .collect())
    }
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When (ms since epoch).
    pub at: i64,
    /// Who (user id).
    pub actor: String,
    /// What, e.g. `customer.erase`.
    pub action: String,
    /// On what.
    pub subject: String,
    /// Figures of the action.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// Merges one `customer.upserted` into the profiles inside `tx` (see the
/// module's rules). Returns the customer's id.
pub(super) async fn merge_upserted(tx: &mut Tx, ev: &Upserted<'_>) -> Result<String, sqlx::Error> {
    let by_ext = match ev.external_id {
        Some(ext) => by_external(tx, ev.scope, ext).await?,
        None => None,
    };
    let holder = phone_owner(tx, ev.scope, ev.phone).await?;
    let now = dialstack_common::now_ms();
    let id = match (by_ext, &holder) {
        (Some(id), _) => id,
        (None, Some(h)) => {
            let ext: Option<String> = sqlx::query("SELECT external_id FROM customers WHERE id = ?")
                .bind(h.as_str())
                .fetch_one(&mut **tx)
                .await?
                .get(0);
            match (ext, ev.external_id) {
                (Some(_), Some(_)) => None,
                (None, Some(new_ext)) => {
                    sqlx::query("UPDATE customers SET external_id = ? WHERE id = ?")
                        .bind(new_ext)
                        .bind(h.as_str())
                        .execute(&mut **tx)
                        .await?;
                    Some(h.clone())
                }
                _ => Some(h.clone()),
            }
            .unwrap_or_default()
        }
        (None, None) => String::new(),
    };
    let id = if id.is_empty() {
        let id = uuid::Uuid::now_v7().to_string();
        let new = NewCustomer {
            scope: ev.scope.to_owned(),
            external_id: ev.external_id.map(str::to_owned),
            name: ev.name.clone().unwrap_or_default(),
            phones: Vec::new(),
            fields: ev.fields.clone(),
            tags: Vec::new(),
            consent: Consent::default(),
        };
        insert_customer(tx, &id, &new, ev.at_ms, now).await?;
        id
    } else {
        merge_into(tx, &id, ev, now).await?;
        id
    };
    match holder {
        Some(h) if h == id => {}
        Some(h) => {
            sqlx::query("UPDATE customer_phones SET customer_id = ? WHERE scope = ? AND phone = ?")
                .bind(id.as_str())
                .bind(ev.scope)
                .bind(ev.phone)
                .execute(&mut **tx)
                .await?;
            repair_primary(tx, &h).await?;
            repair_primary(tx, &id).await?;
            absorb_if_orphaned(tx, &h, &id, now).await?;
        }
        None => {
            add_phone(tx, ev.scope, ev.phone, &id).await?;
            repair_primary(tx, &id).await?;
        }
    }
    Ok(id)
}

/// Folds customer `from` into `into` if `from` has neither a number nor an
/// external id left.
async fn absorb_if_orphaned(
    tx: &mut Tx,
    from: &str,
    into: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let row = sqlx::query(
        "SELECT c.external_id, c.name, c.fields, c.source_at, \
           (SELECT COUNT(*) FROM customer_phones p WHERE p.customer_id = c.id) \
         FROM customers c WHERE c.id = ?",
    )
    .bind(from)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(()) };
    let ext: Option<String> = row.get(0);
    let phones: i64 = row.get(4);
    if ext.is_some() || phones > 0 {
        return Ok(());
    }
    let name: String = row.get(1);
    let fields: BTreeMap<String, FieldValue> =
        serde_json::from_str(&row.get::<String, _>(2)).unwrap_or_default();
    let as_event = Upserted {
        scope: "",
        phone: "",
        external_id: None,
        name: (!name.is_empty()).then_some(name),
        fields,
        at_ms: row.get(3),
    };
    merge_into(tx, into, &as_event, now).await?;
    let mut all: Vec<String> = sqlx::query(
        "SELECT DISTINCT tag FROM customer_tags WHERE customer_id IN (?, ?) ORDER BY tag",
    )
    .bind(from)
    .bind(into)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    all.truncate(MAX_TAGS);
    set_tags(tx, into, &all).await?;
    sqlx::query("UPDATE customers SET tags = ? WHERE id = ?")
        .bind(tags_json(&all))
        .bind(into)
        .execute(&mut **tx)
        .await?;
    set_tags(tx, from, &[]).await?;
    sqlx::query("UPDATE cdrs SET customer_id = ? WHERE customer_id = ?")
        .bind(into)
        .bind(from)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM customers WHERE id = ?")
        .bind(from)
        .execute(&mut **tx)
        .await?;
    tracing::info!(
        from,
        into,
        "customer with no number left absorbed by the number's new customer"
    );
    Ok(())
}

/// Applies an event's name and fields to an existing customer.
async fn merge_into(tx: &mut Tx, id: &str, ev: &Upserted<'_>, now: i64) -> Result<(), sqlx::Error> {
    let row = sqlx::query("SELECT name, fields, source_at FROM customers WHERE id = ?")
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    let mut name: String = row.get(0);
    let mut fields: BTreeMap<String, FieldValue> =
        serde_json::from_str(&row.get::<String, _>(1)).unwrap_or_default();
    let source_at: i64 = row.get(2);
    let newer = ev.at_ms >= source_at;
    if let Some(n) = &ev.name {
        if newer || name.is_empty() {
            name = n.clone();
        }
    }
    for (k, v) in &ev.fields {
        if newer || !fields.contains_key(k) {
            fields.insert(k.clone(), v.clone());
        }
    }
    let mut json = fields_json(&fields);
    if json.len() > MAX_FIELDS_JSON {
        tracing::warn!(
            customer_id = id,
            "merged fields too long, the event's fields are not kept"
        );
        json = row.get(1);
    }
    sqlx::query(
        "UPDATE customers SET name = ?, name_key = ?, fields = ?, source_at = ?, updated_at = ?, version = version + 1 WHERE id = ?",
    )
    .bind(name.as_str())
    .bind(name_key(&name))
    .bind(json)
    .bind(source_at.max(ev.at_ms))
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sets `primary_phone` to one of the customer's numbers if it has none or
/// lost it.
async fn repair_primary(tx: &mut Tx, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE customers SET primary_phone = \
           (SELECT MIN(p.phone) FROM customer_phones p WHERE p.customer_id = customers.id) \
         WHERE id = ? AND (primary_phone IS NULL OR primary_phone NOT IN \
           (SELECT q.phone FROM customer_phones q WHERE q.customer_id = ?))",
    )
    .bind(id)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_customer(
    tx: &mut Tx,
    id: &str,
    new: &NewCustomer,
    source_at: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO customers (id, scope, external_id, name, name_key, primary_phone, fields, tags, \
         recording_allowed, marketing_opt_out, source_at, created_at, updated_at, version) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
    )
    .bind(id)
    .bind(new.scope.as_str())
    .bind(new.external_id.as_deref())
    .bind(new.name.as_str())
    .bind(name_key(&new.name))
    .bind(new.phones.first().map(String::as_str))
    .bind(fields_json(&new.fields))
    .bind(tags_json(&new.tags))
    .bind(i64::from(new.consent.recording_allowed))
    .bind(i64::from(new.consent.marketing_opt_out))
    .bind(source_at)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Gives `phone` to customer `id` and links the calls already made to it
/// in the scope that have no customer yet.
async fn add_phone(tx: &mut Tx, scope: &str, phone: &str, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO customer_phones (scope, phone, customer_id) VALUES (?, ?, ?)")
        .bind(scope)
        .bind(phone)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE cdrs SET customer_id = ? WHERE phone = ? AND customer_id IS NULL AND COALESCE(team, '') = ?",
    )
    .bind(id)
    .bind(phone)
    .bind(scope)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn set_tags(tx: &mut Tx, id: &str, tags: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM customer_tags WHERE customer_id = ?")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    for tag in tags {
        sqlx::query("INSERT INTO customer_tags (tag, customer_id) VALUES (?, ?)")
            .bind(tag.as_str())
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The number or external id of `new` that another customer of its scope
/// already has, as the error to answer.
async fn conflict_of(tx: &mut Tx, new: &NewCustomer) -> Result<Option<CustomerError>, sqlx::Error> {
    if let Some(ext) = &new.external_id {
        if let Some(owner) = by_external(tx, &new.scope, ext).await? {
            return Ok(Some(CustomerError::ExternalTaken { owner }));
        }
    }
    for phone in &new.phones {
        if let Some(owner) = phone_owner(tx, &new.scope, phone).await? {
            return Ok(Some(CustomerError::PhoneTaken {
                phone: phone.clone(),
                owner,
            }));
        }
    }
    Ok(None)
}

async fn by_external(tx: &mut Tx, scope: &str, ext: &str) -> Result<Option<String>, sqlx::Error> {
    Ok(
        sqlx::query("SELECT id FROM customers WHERE scope = ? AND external_id = ?")
            .bind(scope)
            .bind(ext)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.get(0)),
    )
}

async fn phone_owner(tx: &mut Tx, scope: &str, phone: &str) -> Result<Option<String>, sqlx::Error> {
    Ok(
        sqlx::query("SELECT customer_id FROM customer_phones WHERE scope = ? AND phone = ?")
            .bind(scope)
            .bind(phone)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.get(0)),
    )
}

/// Writes an audit row inside `tx`.
pub(super) async fn audit(
    tx: &mut Tx,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO storage_audit (id, at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(dialstack_common::now_ms())
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `FOR UPDATE` where the engine has it (SQLite locks the whole database
/// for a write transaction anyway).
fn lock_clause(dialect: dialstack_common::db::Dialect) -> &'static str {
    match dialect {
        dialstack_common::db::Dialect::MySql => " FOR UPDATE",
        dialstack_common::db::Dialect::Sqlite => "",
    }
}

/// A duplicate key (a race with another writer of the same unique value).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation() || d.code().as_deref() == Some("23000"))
}
