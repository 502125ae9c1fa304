//! The ledger tables (`followers`, `grants`): a follower's window read, written and listed.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreResult;
use crate::ledger::{Grant, LedgerIndex, Window};
use crate::model::{OpenId, Trigger};

use super::corrupt;
use super::engine::Post;

pub(super) fn load_window(conn: &Connection, openid: &OpenId) -> StoreResult<Window> {
    let subscribed: Option<Option<bool>> = conn
        .prepare_cached("SELECT subscribed FROM followers WHERE openid = ?1")?
        .query_row([openid.as_str()], |r| r.get(0))
        .optional()?;
    let mut stmt = conn.prepare_cached(
        "SELECT trigger, opened_at, expires_at, quota, used FROM grants WHERE openid = ?1",
    )?;
    let rows = stmt.query_map([openid.as_str()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<u32>>(3)?,
            r.get::<_, u32>(4)?,
        ))
    })?;
    let mut grants = Vec::new();
    for row in rows {
        let (t, opened_at, expires_at, limit, used) = row?;
        let trigger = Trigger::parse(&t).ok_or_else(|| corrupt(format!("grant trigger {t:?}")))?;
        grants.push(Grant { trigger, opened_at, expires_at, limit, used });
    }
    grants.sort_by_key(|g| g.trigger);
    Ok(Window { grants, subscribed: subscribed.flatten() })
}

/// Writes what changed between `before` and `after` (usually one grant row).
pub(super) fn save_window(
    conn: &Connection,
    openid: &OpenId,
    before: &Window,
    after: &Window,
) -> StoreResult<()> {
    for g in &before.grants {
        if !after.grants.iter().any(|a| a.trigger == g.trigger) {
            conn.prepare_cached("DELETE FROM grants WHERE openid = ?1 AND trigger = ?2")?
                .execute([openid.as_str(), g.trigger.as_str()])?;
        }
    }
    for g in &after.grants {
        if before.grants.contains(g) {
            continue;
        }
        conn.prepare_cached(
            "INSERT INTO grants (openid, trigger, opened_at, expires_at, quota, used) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (openid, trigger) DO UPDATE SET \
             opened_at = excluded.opened_at, expires_at = excluded.expires_at, \
             quota = excluded.quota, used = excluded.used",
        )?
        .execute(params![
            openid.as_str(),
            g.trigger.as_str(),
            g.opened_at,
            g.expires_at,
            g.limit,
            g.used
        ])?;
    }
    if after.subscribed != before.subscribed
        && let Some(s) = after.subscribed
    {
        conn.prepare_cached(
            "INSERT INTO followers (openid, subscribed) VALUES (?1, ?2) \
                 ON CONFLICT (openid) DO UPDATE SET subscribed = excluded.subscribed",
        )?
        .execute(params![openid.as_str(), s])?;
    }
    Ok(())
}

/// Loads, changes and saves one follower's window; records it for the index.
pub(super) fn update_window<T>(
    conn: &Connection,
    post: &mut Post,
    openid: &OpenId,
    f: impl FnOnce(&mut Window) -> T,
) -> StoreResult<(T, Window)> {
    let before = load_window(conn, openid)?;
    let mut w = before.clone();
    let out = f(&mut w);
    if w != before {
        save_window(conn, openid, &before, &w)?;
        post.windows.push((openid.clone(), w.clone()));
    }
    Ok((out, w))
}

/// Every follower with a live grant, in OpenID order, with their live grants and follow state:
/// one scan instead of a query per follower. Returns how many unreadable rows it skipped.
pub(super) fn for_each_live_window(
    conn: &Connection,
    now: i64,
    mut each: impl FnMut(OpenId, Window),
) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(
        "SELECT g.openid, g.trigger, g.opened_at, g.expires_at, g.quota, g.used, f.subscribed \
         FROM grants g LEFT JOIN followers f ON f.openid = g.openid \
         WHERE g.expires_at > ?1 ORDER BY g.openid",
    )?;
    let mut rows = stmt.query([now])?;
    let mut current: Option<(OpenId, Window)> = None;
    let mut skipped = 0usize;
    let mut emit = |(id, mut w): (OpenId, Window)| {
        w.grants.sort_by_key(|g| g.trigger);
        each(id, w);
    };
    while let Some(r) = rows.next()? {
        let openid: String = r.get(0)?;
        let t: String = r.get(1)?;
        let (Ok(openid), Some(trigger)) = (OpenId::parse(&openid), Trigger::parse(&t)) else {
            skipped += 1;
            continue;
        };
        let grant = Grant {
            trigger,
            opened_at: r.get(2)?,
            expires_at: r.get(3)?,
            limit: r.get(4)?,
            used: r.get(5)?,
        };
        let subscribed: Option<bool> = r.get(6)?;
        match &mut current {
            Some((id, w)) if *id == openid => w.grants.push(grant),
            _ => {
                if let Some(done) = current.take() {
                    emit(done);
                }
                current = Some((openid, Window { grants: vec![grant], subscribed }));
            }
        }
    }
    if let Some(done) = current.take() {
        emit(done);
    }
    Ok(skipped)
}

pub(super) fn rebuild_index(
    conn: &Connection,
    index: &LedgerIndex,
    now: i64,
) -> rusqlite::Result<()> {
    let skipped = for_each_live_window(conn, now, |id, w| index.put(id, w))?;
    if skipped > 0 {
        tracing::warn!(rows = skipped, "ignored unreadable grant rows while rebuilding the index");
    }
    Ok(())
}
