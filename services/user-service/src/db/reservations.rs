//! Reserving an agent for a call: one conditional UPDATE per candidate, so
//! of concurrent reservations each agent goes to exactly one, and the
//! reservations that lapse.

use super::agents::{enqueue_agent_state, row_from, AgentStateEvent, ROW_COLS};
use super::Repo;
use super::{Agent, AgentCall, AgentRow};
use crate::domain::{AgentNeeds, AgentState};

/// What became of a reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum Reservation {
    /// This agent is now reserved for the call.
    Reserved(Box<AgentRow>),
    /// The call already holds this reservation (a retried request).
    Held(Box<AgentRow>),
    /// No agent fits and is available.
    NoneFree {
        /// Whether some fitted but other reservations took them first.
        lost_race: bool,
    },
    /// The agent asked for by id does not exist.
    UnknownAgent,
}

impl Repo {
    /// Reserves the agent that fits `needs` and has been available longest
    /// (oldest `state_since`) for `call_id`, until `hold_ms` from now. Each candidate is taken by
    /// its own transaction (`... WHERE user_id = ? AND state = 'available'`
    /// plus the `agent.state` event); one that another reservation took
    /// first is skipped for the next. A transaction never holds more than
    /// one agent's row, so concurrent reservations cannot deadlock.
    pub async fn reserve(
        &self,
        needs: &AgentNeeds,
        call_id: &str,
        hold_ms: i64,
    ) -> Result<Reservation, sqlx::Error> {
        if let Some(held) = self.reserved_for(call_id).await? {
            let a = &held.agent;
            if needs.fits(&a.id, &a.teams, &a.skills) {
                return Ok(Reservation::Held(Box::new(held)));
            }
        }
        let candidates = match &needs.agent_id {
            Some(id) => match self.agent_row(id).await? {
                Some(row) => vec![row],
                None => return Ok(Reservation::UnknownAgent),
            },
            None => {
                self.select_rows(
                    Some(AgentState::Available.as_str()),
                    needs.team.as_deref(),
                    "state_since, user_id",
                )
                .await?
            }
        };
        let fitting = candidates.into_iter().filter(|r| {
            r.agent.state == AgentState::Available
                && needs.fits(&r.agent.id, &r.agent.teams, &r.agent.skills)
        });
        let mut lost_race = false;
        for row in fitting {
            if let Some(reserved) = self.take(&row, call_id, hold_ms).await? {
                return Ok(Reservation::Reserved(Box::new(reserved)));
            }
            lost_race = true;
        }
        Ok(Reservation::NoneFree { lost_race })
    }

    /// The agent reserved for `call_id`, if any.
    async fn reserved_for(&self, call_id: &str) -> Result<Option<AgentRow>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {ROW_COLS} FROM agents WHERE call_id = ? AND state = 'reserved' ORDER BY user_id"
        ))
        .bind(call_id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(row_from).transpose()
    }

    /// Moves `candidate` from available to reserved for `call_id`; `None`
    /// if it is no longer available.
    async fn take(
        &self,
        candidate: &AgentRow,
        call_id: &str,
        hold_ms: i64,
    ) -> Result<Option<AgentRow>, sqlx::Error> {
        let a = &candidate.agent;
        let now = dialstack_common::now_ms();
        let mut tx = self.db.begin().await?;
        let moved = sqlx::query(
            "UPDATE agents SET state = 'reserved', pause_code = NULL, state_since = ?, call_id = ?, reserved_until = ? \
             WHERE user_id = ? AND state = 'available'",
        )
        .bind(now)
        .bind(call_id)
        .bind(now + hold_ms)
        .bind(&a.id)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        let change = AgentStateEvent {
            previous: AgentState::Available,
            state: AgentState::Reserved,
            pause_code: None,
            reason: "reserved",
            at_ms: now,
            teams: &a.teams,
            call_id: Some(call_id),
        };
        enqueue_agent_state(&mut tx, &a.id, &change).await?;
        tx.commit().await?;
        Ok(Some(AgentRow {
            agent: Agent {
                state: AgentState::Reserved,
                pause_code: None,
                state_since: now,
                ..a.clone()
            },
            call: AgentCall {
                call_id: Some(call_id.to_owned()),
                reserved_until: Some(now + hold_ms),
            },
        }))
    }

    /// Gives every reservation whose time ran out (`reserved_until` at or
    /// before `now_ms`) back: the agent is `available` again, reason
    /// `reservation_lapsed`. Each is conditional on the agent being still in
    /// that very reservation, so a concurrent `on_call` wins. Returns the
    /// agents that lapsed.
    pub async fn lapse_reservations(&self, now_ms: i64) -> Result<Vec<AgentRow>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {ROW_COLS} FROM agents WHERE state = 'reserved' AND reserved_until <= ? ORDER BY user_id"
        ))
        .bind(now_ms)
        .fetch_all(&self.db.pool)
        .await?;
        let mut lapsed = Vec::new();
        for row in rows.iter().map(row_from) {
            let row = row?;
            if let super::StateChange::Changed(_) = self
                .transition(&row, AgentState::Available, None, "reservation_lapsed")
                .await?
            {
                lapsed.push(row);
            }
        }
        Ok(lapsed)
    }
}
