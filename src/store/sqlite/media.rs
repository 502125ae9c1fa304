//! The `media` table: the media ids of files named in replies, keyed by content hash and upload
//! type (interface §9), and their upload locks in the shared `locks` table. Created by its own
//! `CREATE TABLE IF NOT EXISTS` at open, so the schema version stays: an older kefu opening the
//! file leaves the table alone.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::media::MediaType;
use crate::store::{MediaKey, MediaRecord, StoreError, StoreResult};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS media (
    sha256       TEXT NOT NULL,
    media_type   TEXT NOT NULL,
    media_id     TEXT NOT NULL,
    uploaded_at  INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    file         TEXT NOT NULL,
    PRIMARY KEY (sha256, media_type)
) WITHOUT ROWID;
";

const COLUMNS: &str = "sha256, media_type, media_id, uploaded_at, bytes, file";

fn lock_name(key: &MediaKey) -> String {
    format!("media_upload:{key}")
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, i64, i64, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn record(
    (sha256, ty, media_id, uploaded_at, bytes, file): (String, String, String, i64, i64, String),
) -> StoreResult<MediaRecord> {
    let media_type = MediaType::parse(&ty)
        .ok_or_else(|| StoreError::Corrupt(format!("media record with unknown type {ty:?}")))?;
    Ok(MediaRecord { sha256, media_type, media_id, uploaded_at, bytes: bytes.max(0) as u64, file })
}

impl SqliteStore {
    pub(super) async fn media_get_sql(&self, key: &MediaKey) -> StoreResult<Option<MediaRecord>> {
        let key = key.clone();
        let raw = self
            .read(move |conn| {
                Ok(conn
                    .query_row(
                        &format!(
                            "SELECT {COLUMNS} FROM media WHERE sha256 = ?1 AND media_type = ?2"
                        ),
                        params![key.sha256, key.media_type.as_str()],
                        row,
                    )
                    .optional()?)
            })
            .await?;
        raw.map(record).transpose()
    }

    pub(super) async fn media_put_sql(&self, rec: &MediaRecord) -> StoreResult<()> {
        let r = rec.clone();
        self.write(move |conn, _, _| {
            conn.execute(
                &format!(
                    "INSERT INTO media ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (sha256, media_type) DO UPDATE SET media_id = excluded.media_id, \
                     uploaded_at = excluded.uploaded_at, bytes = excluded.bytes, file = excluded.file"
                ),
                params![
                    r.sha256,
                    r.media_type.as_str(),
                    r.media_id,
                    r.uploaded_at,
                    i64::try_from(r.bytes).unwrap_or(i64::MAX),
                    r.file
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn media_list_sql(&self) -> StoreResult<Vec<MediaRecord>> {
        let raw = self
            .read(|conn| {
                let mut st = conn
                    .prepare(&format!("SELECT {COLUMNS} FROM media ORDER BY media_type, sha256"))?;
                let rows = st.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        raw.into_iter().map(record).collect()
    }

    pub(super) async fn media_try_lock_sql(
        &self,
        key: &MediaKey,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.try_lock_sql(lock_name(key), holder, ttl).await
    }

    pub(super) async fn media_unlock_sql(&self, key: &MediaKey, holder: &str) -> StoreResult<()> {
        self.unlock_sql(lock_name(key), holder).await
    }
}
