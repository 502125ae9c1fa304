//! The `llm_turns` table: the kept conversation turns of `openai` backends, per backend and
//! follower (interface §7.6). Created by its own `CREATE TABLE IF NOT EXISTS` at open, like the
//! media table, so the schema version stays.

use rusqlite::params;

use super::SqliteStore;
use crate::llm::Turn;
use crate::model::OpenId;
use crate::store::StoreResult;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS llm_turns (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    backend    TEXT NOT NULL,
    openid     TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    user       TEXT NOT NULL,
    assistant  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS llm_turns_follower ON llm_turns (openid, backend, id);
";

impl SqliteStore {
    pub(super) async fn turns_sql(
        &self,
        backend: Option<&str>,
        openid: &OpenId,
    ) -> StoreResult<Vec<(String, Turn)>> {
        let (backend, openid) = (backend.map(str::to_string), openid.clone());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT backend, at_ms, user, assistant FROM llm_turns \
                 WHERE openid = ?1 AND (?2 IS NULL OR backend = ?2) ORDER BY backend, id",
            )?;
            let rows = stmt.query_map(params![openid.as_str(), backend], |r| {
                Ok((r.get(0)?, Turn { at_ms: r.get(1)?, user: r.get(2)?, assistant: r.get(3)? }))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(super) async fn add_turn_sql(
        &self,
        backend: &str,
        openid: &OpenId,
        turn: Turn,
        keep: usize,
        oldest_ms: i64,
    ) -> StoreResult<()> {
        let (backend, openid) = (backend.to_string(), openid.clone());
        self.write(move |conn, _, _| {
            conn.prepare_cached(
                "INSERT INTO llm_turns (backend, openid, at_ms, user, assistant) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![backend, openid.as_str(), turn.at_ms, turn.user, turn.assistant])?;
            // Keep the newest `keep` within the ttl; older turns are never sent again.
            conn.prepare_cached(
                "DELETE FROM llm_turns WHERE openid = ?1 AND backend = ?2 AND (at_ms <= ?3 OR id NOT IN \
                 (SELECT id FROM llm_turns WHERE openid = ?1 AND backend = ?2 ORDER BY id DESC LIMIT ?4))",
            )?
            .execute(params![openid.as_str(), backend, oldest_ms, i64::try_from(keep).unwrap_or(i64::MAX)])?;
            Ok(())
        })
        .await
    }

    pub(super) async fn clear_turns_sql(&self, openid: &OpenId) -> StoreResult<u64> {
        let openid = openid.clone();
        self.write(move |conn, _, _| {
            Ok(conn
                .prepare_cached("DELETE FROM llm_turns WHERE openid = ?1")?
                .execute([openid.as_str()])? as u64)
        })
        .await
    }
}
