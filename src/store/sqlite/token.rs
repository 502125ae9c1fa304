//! The `token` and `locks` tables: the access token every process shares and its refresh lock
//! (interface §6.10).

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use crate::model::{CachedToken, Secret, TokenCache};
use crate::store::StoreResult;

use super::SqliteStore;

const TOKEN_LOCK: &str = "access_token_refresh";

#[async_trait]
impl TokenCache for SqliteStore {
    async fn load(&self) -> anyhow::Result<Option<CachedToken>> {
        let t = self
            .read(|conn| {
                Ok(conn
                    .query_row(
                        "SELECT token, expires_at, fetched_at FROM token WHERE id = 1",
                        [],
                        |r| {
                            Ok(CachedToken {
                                token: Secret::new(r.get::<_, String>(0)?),
                                expires_at: r.get(1)?,
                                fetched_at: r.get(2)?,
                            })
                        },
                    )
                    .optional()?)
            })
            .await?;
        Ok(t)
    }

    async fn save(&self, token: &CachedToken) -> anyhow::Result<()> {
        let t = token.clone();
        self.write(move |conn, _, _| {
            conn.execute(
                "INSERT INTO token (id, token, expires_at, fetched_at) VALUES (1, ?1, ?2, ?3) \
                 ON CONFLICT (id) DO UPDATE SET token = excluded.token, \
                 expires_at = excluded.expires_at, fetched_at = excluded.fetched_at",
                params![t.token.expose(), t.expires_at, t.fetched_at],
            )?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn invalidate(&self, token: &str) -> anyhow::Result<()> {
        let token = token.to_string();
        self.write(move |conn, _, _| {
            conn.execute("DELETE FROM token WHERE id = 1 AND token = ?1", [token])?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn try_lock_refresh(&self, holder: &str, ttl: Duration) -> anyhow::Result<bool> {
        Ok(self.try_lock_sql(TOKEN_LOCK.to_string(), holder, ttl).await?)
    }

    async fn unlock_refresh(&self, holder: &str) -> anyhow::Result<()> {
        Ok(self.unlock_sql(TOKEN_LOCK.to_string(), holder).await?)
    }
}

impl SqliteStore {
    /// Takes the named lock in the `locks` table for `holder` until `ttl` from now: true when
    /// it was free, expired, or already this holder's (then extended).
    pub(super) async fn try_lock_sql(
        &self,
        name: String,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let holder = holder.to_string();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.write(move |conn, inner, _| {
            let now = inner.clock.now_ms();
            let n = conn.execute(
                "INSERT INTO locks (name, holder, until_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 until_ms = excluded.until_ms \
                 WHERE locks.until_ms <= ?4 OR locks.holder = excluded.holder",
                params![name, holder, now.saturating_add(ttl_ms), now],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Releases the named lock if `holder` still holds it.
    pub(super) async fn unlock_sql(&self, name: String, holder: &str) -> StoreResult<()> {
        let holder = holder.to_string();
        self.write(move |conn, _, _| {
            conn.execute("DELETE FROM locks WHERE name = ?1 AND holder = ?2", [name, holder])?;
            Ok(())
        })
        .await
    }
}
