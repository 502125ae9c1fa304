//! Durable state: the SQLite store behind the `Store` trait (dedupe, ledger, outbox, token),
//! the admin window endpoint, `kefu window`, and a SIGKILL crash test.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{App, test as atest, web};
use kefu::config::{SyncMode, WindowConfig, WindowRule};
use kefu::delivery::{OwnPassive, Terms};
use kefu::http::windows::window_handler;
use kefu::ledger::{ChargeOutcome, DenyReason};
use kefu::model::{
    CachedToken, Clock, ManualClock, OpenId, OutMessage, OutboxAction, PassiveReply, PlannedAction,
    Secret, SharedClock, SystemClock, TokenCache, Trigger, WindowEffect,
};
use kefu::store::{
    CommitOutcome, NewOutboxEntry, OUTCOME_UNKNOWN, OutboxStatus, Outcome, PushCommit, SendClaim,
    SqliteStore, Store, StoreError, UNSUBSCRIBED,
};

const T0_MS: i64 = 1_700_000_000_000;
const T0: i64 = T0_MS / 1000;
const RETENTION: u64 = 660;

fn oid(s: &str) -> OpenId {
    OpenId::parse(s).unwrap()
}

fn text(rule: &str, content: &str, delay_ms: u64) -> PlannedAction<OutboxAction> {
    PlannedAction {
        rule: rule.into(),
        action: OutboxAction::Send { message: OutMessage::Text { content: content.into() } },
        delay: Duration::from_millis(delay_ms),
        kf_account: None,
        source: Default::default(),
    }
}

/// A push from `who` opening `effect`, with one outbox entry per `(rule, delay_ms)`.
fn push(
    key: &str,
    who: &str,
    effect: WindowEffect,
    at_ms: i64,
    plan: &[(&str, u64)],
) -> PushCommit {
    PushCommit {
        dedupe_key: key.into(),
        openid: oid(who),
        effect,
        received_at_ms: at_ms,
        passive: Some(OwnPassive::text("r", format!("answer to {key}"))),
        terms: Terms::default(),
        log: None,
        outbox: plan
            .iter()
            .enumerate()
            .map(|(i, (rule, delay))| NewOutboxEntry {
                rule: (*rule).into(),
                seq: i as u32,
                action: text(rule, &format!("{key} #{i}"), *delay),
                due_at_ms: at_ms + *delay as i64,
            })
            .collect(),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    store: SqliteStore,
}

impl Fixture {
    fn new() -> Self {
        Self::with_window(WindowConfig::default())
    }
    fn with_window(window: WindowConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0_MS));
        let store = open_store(dir.path(), &window, SyncMode::Full, clock.clone()).unwrap();
        Fixture { dir, clock, store }
    }
    fn reopen(&self) -> SqliteStore {
        self.store.close();
        open_store(self.dir.path(), &WindowConfig::default(), SyncMode::Full, self.clock.clone())
            .unwrap()
    }
    fn client(&self) -> SqliteStore {
        SqliteStore::open_client(self.dir.path(), &WindowConfig::default(), self.clock.clone())
            .unwrap()
    }
}

/// The serving store under `dir`, as the tests open it.
fn open_store(
    dir: &Path,
    window: &WindowConfig,
    sync: SyncMode,
    clock: SharedClock,
) -> Result<SqliteStore, StoreError> {
    SqliteStore::open(dir, window, RETENTION, sync, clock)
}

fn fresh_ids(o: CommitOutcome) -> Vec<i64> {
    match o {
        CommitOutcome::Fresh { outbox_ids, .. } => outbox_ids,
        other => panic!("expected a fresh commit, got {other:?}"),
    }
}

#[tokio::test]
async fn commit_records_push_and_redelivery_gets_the_same_answer() {
    let f = Fixture::new();
    let p = push(
        "msg:1",
        "oAlice",
        WindowEffect::Open(Trigger::Message),
        T0_MS + 1500,
        &[("hello", 0), ("later", 30_000)],
    );
    let out = f.store.commit_push(p.clone()).await.unwrap();
    let CommitOutcome::Fresh { window_after, outbox_ids, .. } = out else { panic!("{out:?}") };
    assert_eq!(outbox_ids.len(), 2);
    assert_eq!(window_after.grants[0].opened_at, T0 + 1, "opened_at is the receipt second");
    assert_eq!(window_after.subscribed, Some(true));

    // A redelivery (even with a different plan) writes nothing and answers as the first.
    let mut again = p.clone();
    again.passive = Some(OwnPassive::text("r", "something else"));
    assert_eq!(
        f.store.commit_push(again).await.unwrap(),
        CommitOutcome::Duplicate { answer: Some(PassiveReply::text("answer to msg:1")) }
    );
    let view = f.store.window(&oid("oAlice"), T0 + 2).await.unwrap();
    assert_eq!(
        serde_json::to_string(&view).unwrap(),
        format!(
            r#"{{"openid":"oAlice","open":true,"subscribed":true,"grants":[{{"trigger":"message","opened_at":{o},"expires_at":{e},"limit":5,"used":0}}],"pending":2,"held":0}}"#,
            o = T0 + 1,
            e = T0 + 1 + 48 * 3600
        )
    );
    let pending = f.store.pending_for(&oid("oAlice")).await.unwrap();
    assert_eq!(pending.iter().map(|e| e.rule.as_str()).collect::<Vec<_>>(), ["hello", "later"]);
    assert_eq!(pending[1].due_at_ms, T0_MS + 1500 + 30_000);
    assert_eq!(pending[1].action, text("later", "msg:1 #1", 30_000));
    assert_eq!(pending[0].push_key, "msg:1");
    assert_eq!(f.store.peek_window(&oid("oAlice")).await.unwrap(), Some(window_after));
}

#[tokio::test]
async fn never_seen_follower_is_closed_with_no_grants() {
    let f = Fixture::new();
    let v = f.store.window(&oid("oNobody"), T0).await.unwrap();
    assert_eq!(
        serde_json::to_string(&v).unwrap(),
        r#"{"openid":"oNobody","open":false,"subscribed":null,"grants":[],"pending":0,"held":0}"#
    );
    assert_eq!(f.store.peek_window(&oid("oNobody")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_concurrent_deliveries_commit_once() {
    let f = Fixture::new();
    let store: Arc<dyn Store> = Arc::new(f.store.clone());
    let p = push(
        "evt:oBob:123:CLICK:K",
        "oBob",
        WindowEffect::Open(Trigger::Menu),
        T0_MS,
        &[("a", 0), ("b", 0)],
    );
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (s, p) = (store.clone(), p.clone());
            tokio::spawn(async move { s.commit_push(p).await.unwrap() })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        match t.await.unwrap() {
            CommitOutcome::Fresh { .. } => fresh += 1,
            CommitOutcome::Duplicate { answer } => {
                assert_eq!(answer, Some(PassiveReply::text("answer to evt:oBob:123:CLICK:K")))
            }
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(store.pending_count(&oid("oBob")).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_share_transactions() {
    let f = Fixture::new();
    let store = Arc::new(f.store.clone());
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move {
                let p = push(
                    &format!("msg:{i}"),
                    &format!("oU{i}"),
                    WindowEffect::None,
                    T0_MS,
                    &[("r", 0)],
                );
                s.commit_push(p).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), CommitOutcome::Fresh { .. }));
    }
    let (txs, jobs) = f.store.commit_stats();
    assert_eq!(jobs, 300);
    assert!(txs < 150, "300 concurrent commits took {txs} transactions: no grouping");
}

#[tokio::test]
async fn unsubscribe_closes_grants_and_cancels_pending_messages() {
    let f = Fixture::new();
    let ids = fresh_ids(
        f.store
            .commit_push(push(
                "msg:1",
                "oCarol",
                WindowEffect::Open(Trigger::Message),
                T0_MS,
                &[("soon", 10_000), ("later", 60_000)],
            ))
            .await
            .unwrap(),
    );
    assert!(f.store.claim(ids[0]).await.unwrap(), "the first is being sent");
    let out = f
        .store
        .commit_push(push(
            "evt:oCarol:9:unsubscribe:",
            "oCarol",
            WindowEffect::CloseAll,
            T0_MS + 5000,
            &[],
        ))
        .await
        .unwrap();
    let CommitOutcome::Fresh { window_after, .. } = out else { panic!() };
    assert!(window_after.grants.is_empty());
    let v = f.store.window(&oid("oCarol"), T0 + 5).await.unwrap();
    assert_eq!((v.open, v.subscribed, v.grants.len(), v.pending), (false, Some(false), 0, 1));
    let e = f.store.outbox_entry(ids[1]).await.unwrap().unwrap();
    assert_eq!((e.status, e.reason.as_deref()), (OutboxStatus::Dropped, Some(UNSUBSCRIBED)));
    let e = f.store.outbox_entry(ids[0]).await.unwrap().unwrap();
    assert_eq!(e.status, OutboxStatus::InFlight, "a send already under way is not cancelled");
    assert_eq!(
        f.store.charge(&oid("oCarol"), T0 + 6).await.unwrap(),
        ChargeOutcome::Denied { reason: DenyReason::Unsubscribed }
    );
    assert_eq!(f.store.peek_window(&oid("oCarol")).await.unwrap(), None);
}

#[tokio::test]
async fn charge_refund_exhaust_and_close() {
    let f = Fixture::new();
    let who = oid("oDan");
    f.store
        .commit_push(push("msg:1", "oDan", WindowEffect::Open(Trigger::Message), T0_MS, &[]))
        .await
        .unwrap();
    f.store
        .commit_push(push("evt:1", "oDan", WindowEffect::Open(Trigger::Menu), T0_MS + 10_000, &[]))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..9 {
        got.push(f.store.charge(&who, T0 + 20).await.unwrap());
    }
    let menu = ChargeOutcome::Allowed { trigger: Trigger::Menu, opened_at: T0 + 10 };
    let msg = ChargeOutcome::Allowed { trigger: Trigger::Message, opened_at: T0 };
    let no = ChargeOutcome::Denied { reason: DenyReason::Exhausted };
    assert_eq!(got, [menu, menu, menu, msg, msg, msg, msg, msg, no]);
    assert!(f.store.refund(&who, Trigger::Message, T0).await.unwrap());
    assert!(!f.store.refund(&who, Trigger::Message, T0 - 1).await.unwrap(), "no such grant");
    assert_eq!(f.store.charge(&who, T0 + 21).await.unwrap(), msg);
    assert_eq!(f.store.charge(&who, T0 + 21).await.unwrap(), no);
    // The menu grant ran out of time: after 70 s only the message grant is live.
    let v = f.store.window(&who, T0 + 70).await.unwrap();
    assert_eq!(
        v.grants.iter().map(|g| (g.trigger, g.used)).collect::<Vec<_>>(),
        [(Trigger::Message, 5)]
    );
    // The index agrees with the database.
    let peek = f.store.peek_window(&who).await.unwrap().unwrap();
    assert_eq!(peek.grants.iter().map(|g| g.used).collect::<Vec<_>>(), [5, 3]);

    f.store
        .commit_push(push(
            "pay:42",
            "oDan",
            WindowEffect::Open(Trigger::Payment),
            T0_MS + 80_000,
            &[],
        ))
        .await
        .unwrap();
    assert!(f.store.charge(&who, T0 + 81).await.unwrap().is_allowed());
    f.store.exhaust_window(&who, T0 + 82).await.unwrap();
    let v = f.store.window(&who, T0 + 82).await.unwrap();
    assert!(!v.open);
    assert_eq!(v.grants.len(), 1, "the unlimited payment grant closed on 45047");
    assert_eq!(f.store.charge(&who, T0 + 83).await.unwrap(), no);
    f.store.close_window(&who).await.unwrap();
    assert_eq!(
        f.store.charge(&who, T0 + 84).await.unwrap(),
        ChargeOutcome::Denied { reason: DenyReason::Closed }
    );
    assert_eq!(f.store.window(&who, T0 + 84).await.unwrap().grants, vec![]);
}

#[tokio::test]
async fn outbox_lifecycle() {
    let f = Fixture::new();
    let a = fresh_ids(
        f.store
            .commit_push(push(
                "msg:a",
                "oEve",
                WindowEffect::Open(Trigger::Message),
                T0_MS,
                &[("first", 0), ("second", 0), ("delayed", 60_000)],
            ))
            .await
            .unwrap(),
    );
    let b = fresh_ids(
        f.store
            .commit_push(push(
                "msg:b",
                "oFay",
                WindowEffect::Open(Trigger::Message),
                T0_MS + 1,
                &[("x", 0)],
            ))
            .await
            .unwrap(),
    );
    let due = f.store.due(T0_MS + 10, 10).await.unwrap();
    assert_eq!(due.iter().map(|e| e.id).collect::<Vec<_>>(), [a[0], a[1], b[0]]);
    assert_eq!(f.store.due(T0_MS + 10, 2).await.unwrap().len(), 2);
    assert_eq!(f.store.next_due_at().await.unwrap(), Some(T0_MS));

    assert!(f.store.claim(a[0]).await.unwrap());
    assert!(!f.store.claim(a[0]).await.unwrap(), "claimed once only");
    f.store.finish(a[0], Outcome::Sent).await.unwrap();
    assert!(f.store.claim(a[1]).await.unwrap());
    f.store
        .finish(
            a[1],
            Outcome::Retry { due_at_ms: T0_MS + 5000, reason: "45011 too frequent".into() },
        )
        .await
        .unwrap();
    let e = f.store.outbox_entry(a[1]).await.unwrap().unwrap();
    assert_eq!(
        (e.status, e.attempts, e.due_at_ms, e.reason.as_deref()),
        (OutboxStatus::Pending, 1, T0_MS + 5000, Some("45011 too frequent"))
    );
    assert!(f.store.claim(b[0]).await.unwrap());
    f.store.finish(b[0], Outcome::Failed { reason: "45002 too long".into() }).await.unwrap();
    f.store
        .finish(a[2], Outcome::Dropped { reason: "window closed at its time".into() })
        .await
        .unwrap();
    assert_eq!(f.store.due(T0_MS + 10, 10).await.unwrap(), vec![]);
    assert_eq!(f.store.next_due_at().await.unwrap(), Some(T0_MS + 5000));
    assert_eq!(f.store.pending_count(&oid("oEve")).await.unwrap(), 1);
    assert_eq!(f.store.pending_count(&oid("oFay")).await.unwrap(), 0);
    let sent = f.store.outbox_entry(a[0]).await.unwrap().unwrap();
    assert_eq!((sent.status, sent.attempts, sent.seq), (OutboxStatus::Sent, 1, 0));
    assert_eq!(
        f.store.finish(9999, Outcome::Sent).await.unwrap_err(),
        StoreError::UnknownEntry(9999)
    );
}

/// The sender's step before a message goes out: claim and charge in one transaction, or drop
/// the entry when the window refuses, or nothing when it was taken.
#[tokio::test]
async fn claim_send_claims_and_charges_in_one_transaction() {
    let window = WindowConfig {
        message: WindowRule { limit: Some(2), duration: Duration::from_secs(3600) },
        ..WindowConfig::default()
    };
    let f = Fixture::with_window(window);
    let open = WindowEffect::Open(Trigger::Message);
    let ids = fresh_ids(
        f.store
            .commit_push(push("msg:c1", "oGus", open, T0_MS, &[("a", 0), ("b", 0)]))
            .await
            .unwrap(),
    );
    let now = T0_MS / 1000;
    let (tx0, _) = f.store.commit_stats();
    let first = f.store.claim_send(ids[0], &oid("oGus"), now, None).await.unwrap();
    assert_eq!(first, SendClaim::Charged { trigger: Trigger::Message, opened_at: now });
    assert_eq!(f.store.commit_stats().0, tx0 + 1, "claim and charge are one transaction");
    let e = f.store.outbox_entry(ids[0]).await.unwrap().unwrap();
    assert_eq!((e.status, e.attempts), (OutboxStatus::InFlight, 1));
    assert_eq!(f.store.window(&oid("oGus"), now).await.unwrap().grants[0].used, 1);

    // Claimed already: nothing happens, nothing is charged.
    assert_eq!(
        f.store.claim_send(ids[0], &oid("oGus"), now, None).await.unwrap(),
        SendClaim::Taken
    );
    // A manual send takes the last of the quota of 2: without a hold time the second message
    // is dropped with the reason, uncharged.
    assert!(f.store.charge(&oid("oGus"), now).await.unwrap().is_allowed());
    let second = f.store.claim_send(ids[1], &oid("oGus"), now, None).await.unwrap();
    assert_eq!(second, SendClaim::Denied(DenyReason::Exhausted));
    let e = f.store.outbox_entry(ids[1]).await.unwrap().unwrap();
    assert_eq!(e.status, OutboxStatus::Dropped);
    assert_eq!(e.reason.as_deref(), Some(DenyReason::Exhausted.to_string().as_str()));
    assert_eq!(f.store.window(&oid("oGus"), now).await.unwrap().grants[0].used, 2);

    // With a hold time it is held for the next push, in the same transaction, uncharged.
    let ids = fresh_ids(
        f.store
            .commit_push(push("msg:c2", "oHal", open, T0_MS, &[("a", 0), ("b", 0)]))
            .await
            .unwrap(),
    );
    for _ in 0..2 {
        assert!(f.store.charge(&oid("oHal"), now).await.unwrap().is_allowed());
    }
    let until = T0_MS + 60_000;
    let (tx0, _) = f.store.commit_stats();
    let held = f.store.claim_send(ids[0], &oid("oHal"), now, Some(until)).await.unwrap();
    assert_eq!(held, SendClaim::Held(DenyReason::Exhausted));
    assert_eq!(f.store.commit_stats().0, tx0 + 1, "claimed and held in one transaction");
    let e = f.store.outbox_entry(ids[0]).await.unwrap().unwrap();
    assert_eq!((e.status, e.due_at_ms), (OutboxStatus::Held, until));
    let mailbox = f.store.held_for(&oid("oHal"), T0_MS).await.unwrap();
    assert_eq!(mailbox.iter().map(|h| h.id).collect::<Vec<_>>(), [ids[0]]);
    assert_eq!(f.store.window(&oid("oHal"), now).await.unwrap().held, 1);
    assert!(f.store.held_for(&oid("oHal"), until).await.unwrap().is_empty(), "expired then");
}

#[tokio::test]
async fn append_outbox_is_idempotent_per_push_for_a_delegating_store() {
    let f = Fixture::new();
    let plan = push("msg:7", "oNed", WindowEffect::None, T0_MS, &[("a", 0), ("b", 5000)]).outbox;
    let who = oid("oNed");
    let ids = f.store.append_outbox(&who, "msg:7", false, plan.clone()).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(f.store.append_outbox(&who, "msg:7", false, plan.clone()).await.unwrap(), ids);
    assert_eq!(f.store.pending_count(&who).await.unwrap(), 2);
    assert_eq!(f.store.window(&who, T0).await.unwrap().grants, vec![], "no ledger change");
    // An unsubscribe delivered this way still cancels what is pending.
    assert_eq!(
        f.store.append_outbox(&who, "evt:u", true, vec![]).await.unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(f.store.pending_count(&who).await.unwrap(), 0);
}

/// A second serving process on one state.dir would settle the first one's in-flight sends as
/// "outcome unknown" and run a second sender: it is refused, with what to do. CLI clients are
/// not owners and still open; a closed owner lets the next one in.
#[tokio::test]
async fn a_second_owner_of_a_state_dir_is_refused() {
    let f = Fixture::new();
    let open =
        || open_store(f.dir.path(), &WindowConfig::default(), SyncMode::Full, f.clock.clone());
    let err = open().unwrap_err().to_string();
    assert!(err.contains("another `kefu serve` is running on this state.dir"), "{err}");
    assert!(err.contains("kefu.lock") && err.contains("its own state.dir"), "{err}");
    assert!(f.client().ping().await.is_ok(), "a CLI client still opens");
    f.store.close();
    assert!(open().is_ok(), "the lock goes with close()");
}

#[tokio::test]
async fn reopen_settles_in_flight_sends_and_rebuilds_the_index() {
    let f = Fixture::new();
    let ids = fresh_ids(
        f.store
            .commit_push(push(
                "msg:1",
                "oGus",
                WindowEffect::Open(Trigger::Message),
                T0_MS,
                &[("a", 0), ("b", 0)],
            ))
            .await
            .unwrap(),
    );
    assert!(f.store.claim(ids[0]).await.unwrap());
    f.store.charge(&oid("oGus"), T0).await.unwrap();

    // A CLI opening the store while serve runs must not touch the in-flight send.
    let client = f.client();
    assert_eq!(client.outbox_entry(ids[0]).await.unwrap().unwrap().status, OutboxStatus::InFlight);
    assert!(client.index().is_empty(), "a client does not load the index");
    assert_eq!(client.peek_window(&oid("oGus")).await.unwrap().unwrap().grants[0].used, 1);

    let store = f.reopen();
    let e = store.outbox_entry(ids[0]).await.unwrap().unwrap();
    assert_eq!((e.status, e.reason.as_deref()), (OutboxStatus::Failed, Some(OUTCOME_UNKNOWN)));
    assert_eq!(store.outbox_entry(ids[1]).await.unwrap().unwrap().status, OutboxStatus::Pending);
    assert_eq!(store.index().len(), 1);
    let w = store.index().get(&oid("oGus")).unwrap();
    assert_eq!((w.grants[0].used, w.subscribed), (1, Some(true)));
    // The dedupe record survived too.
    assert!(matches!(
        store
            .commit_push(push("msg:1", "oGus", WindowEffect::Open(Trigger::Message), T0_MS, &[]))
            .await
            .unwrap(),
        CommitOutcome::Duplicate { .. }
    ));
}

#[tokio::test]
async fn charges_from_another_process_are_not_lost() {
    let f = Fixture::new();
    let who = oid("oHal");
    f.store
        .commit_push(push("evt:scan", "oHal", WindowEffect::Open(Trigger::Scan), T0_MS, &[]))
        .await
        .unwrap();
    let cli = f.client();
    assert!(cli.charge(&who, T0 + 1).await.unwrap().is_allowed());
    assert!(cli.charge(&who, T0 + 1).await.unwrap().is_allowed());
    // serve's index has not seen those charges, but its charge reads the database.
    assert!(f.store.charge(&who, T0 + 2).await.unwrap().is_allowed());
    assert_eq!(
        f.store.charge(&who, T0 + 2).await.unwrap(),
        ChargeOutcome::Denied { reason: DenyReason::Exhausted }
    );
    assert_eq!(cli.window(&who, T0 + 3).await.unwrap().grants[0].used, 3);
}

#[tokio::test]
async fn access_token_is_shared_and_outlives_the_process() {
    let f = Fixture::new();
    let cache = f.store.token_cache();
    assert_eq!(cache.load().await.unwrap(), None);
    let tok = CachedToken { token: Secret::new("ACCESS_1"), expires_at: T0 + 7200, fetched_at: T0 };
    cache.save(&tok).await.unwrap();
    let cli = f.client();
    assert_eq!(cli.load().await.unwrap(), Some(tok.clone()));
    cli.invalidate("ACCESS_0").await.unwrap();
    assert_eq!(f.reopen().load().await.unwrap(), Some(tok.clone()), "a stale 40001 is ignored");
    let store = f.client();
    store.invalidate("ACCESS_1").await.unwrap();
    assert_eq!(store.load().await.unwrap(), None);

    assert!(store.try_lock_refresh("serve-1", Duration::from_secs(10)).await.unwrap());
    assert!(!cli.try_lock_refresh("cli-2", Duration::from_secs(10)).await.unwrap());
    assert!(store.try_lock_refresh("serve-1", Duration::from_secs(10)).await.unwrap());
    f.clock.advance(Duration::from_secs(11));
    assert!(cli.try_lock_refresh("cli-2", Duration::from_secs(10)).await.unwrap(), "expired");
    store.unlock_refresh("serve-1").await.unwrap();
    assert!(!store.try_lock_refresh("serve-1", Duration::from_secs(10)).await.unwrap());
    cli.unlock_refresh("cli-2").await.unwrap();
    assert!(store.try_lock_refresh("serve-1", Duration::from_secs(10)).await.unwrap());
}

#[tokio::test]
async fn purge_removes_expired_grants_and_old_dedupe_records() {
    let f = Fixture::new();
    f.store
        .commit_push(push("evt:menu", "oIda", WindowEffect::Open(Trigger::Menu), T0_MS, &[]))
        .await
        .unwrap();
    f.store
        .commit_push(push("msg:1", "oJoe", WindowEffect::Open(Trigger::Message), T0_MS, &[]))
        .await
        .unwrap();
    assert_eq!(f.store.next_expiry_ms().await.unwrap(), Some(T0_MS + 60_000));
    assert_eq!(f.store.purge(T0_MS + 59_000).await.unwrap(), (0, 0, 0));
    assert_eq!(f.store.purge(T0_MS + 60_000).await.unwrap(), (1, 0, 0));
    assert_eq!(f.store.index().len(), 1, "the index forgot the expired menu grant");
    assert_eq!(
        f.store.next_expiry_ms().await.unwrap(),
        Some(T0_MS + RETENTION as i64 * 1000),
        "next: the dedupe records"
    );
    // Within retention a replay is caught; after it the record is gone.
    let replay = push("msg:1", "oJoe", WindowEffect::Open(Trigger::Message), T0_MS, &[]);
    assert!(matches!(
        f.store.commit_push(replay.clone()).await.unwrap(),
        CommitOutcome::Duplicate { .. }
    ));
    assert_eq!(f.store.purge(T0_MS + RETENTION as i64 * 1000).await.unwrap(), (0, 2, 0));
    assert!(matches!(f.store.commit_push(replay).await.unwrap(), CommitOutcome::Fresh { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_task_wakes_at_the_earliest_expiry() {
    let window = WindowConfig {
        menu: WindowRule { limit: Some(3), duration: Duration::from_secs(1) },
        ..WindowConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let store = open_store(dir.path(), &window, SyncMode::Full, clock.clone()).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = store.spawn_purger(stopped);
    // Let it compute an empty schedule (an hour away) first; the commit must wake it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let now = clock.now_ms();
    store
        .commit_push(push("evt:m", "oKim", WindowEffect::Open(Trigger::Menu), now, &[]))
        .await
        .unwrap();
    assert_eq!(store.index().len(), 1);
    let t = Instant::now();
    while !store.index().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "the purge task never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}

#[actix_web::test]
async fn admin_window_endpoint() {
    let f = Fixture::new();
    f.store
        .commit_push(push(
            "msg:1",
            "oLee",
            WindowEffect::Open(Trigger::Message),
            T0_MS,
            &[("r", 1000)],
        ))
        .await
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(f.store.clone());
    let clock: SharedClock = f.clock.clone();
    let app = atest::init_service(
        App::new()
            .app_data(web::Data::new(store))
            .app_data(web::Data::new(clock))
            .route("/admin/windows/{openid}", web::get().to(window_handler)),
    )
    .await;
    let get = |uri: &str| atest::TestRequest::get().uri(uri).to_request();
    let resp = atest::call_service(&app, get("/admin/windows/oLee")).await;
    assert_eq!(resp.status(), 200);
    let body = atest::read_body(resp).await;
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        format!(
            r#"{{"openid":"oLee","open":true,"subscribed":true,"grants":[{{"trigger":"message","opened_at":{T0},"expires_at":{},"limit":5,"used":0}}],"pending":1,"held":0,"held_answers":[]}}"#,
            T0 + 48 * 3600
        )
    );
    let resp = atest::call_service(&app, get("/admin/windows/oNew")).await;
    assert_eq!(resp.status(), 200);
    let body = atest::read_body(resp).await;
    assert_eq!(
        &body[..],
        br#"{"openid":"oNew","open":false,"subscribed":null,"grants":[],"pending":0,"held":0,"held_answers":[]}"#
    );
    let resp = atest::call_service(&app, get("/admin/windows/bad%20id")).await;
    assert_eq!(resp.status(), 400);
    let body = atest::read_body(resp).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("OpenID must be 1 to 64 characters"), "{v}");
}

/// The list (one scan over live grants) says for each follower exactly what `window` says for
/// that follower alone; followers with nothing live are left out.
#[tokio::test]
async fn list_windows_agrees_with_window_for_every_follower() {
    let f = Fixture::new();
    let pushes = [
        (
            "msg:l1",
            "oAda",
            WindowEffect::Open(Trigger::Message),
            T0_MS,
            &[("a", 0), ("b", 9_000)][..],
        ),
        ("e:l2", "oBea", WindowEffect::Open(Trigger::Menu), T0_MS, &[][..]),
        ("e:l3", "oBea", WindowEffect::Follow(Trigger::Payment), T0_MS + 1000, &[][..]),
        ("e:l4", "oCal", WindowEffect::Open(Trigger::Scan), T0_MS, &[][..]),
        ("e:l5", "oDee", WindowEffect::Open(Trigger::Subscribe), T0_MS, &[][..]),
        ("e:l6", "oDee", WindowEffect::CloseAll, T0_MS + 2000, &[][..]),
    ];
    for (key, who, effect, at, plan) in pushes {
        f.store.commit_push(push(key, who, effect, at, plan)).await.unwrap();
    }
    // Two minutes on: menu and scan grants (1 minute) have expired.
    let now = T0 + 120;
    let listed = f.store.list_windows(now).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|v| v.openid.as_str()).collect();
    assert_eq!(ids, ["oAda", "oBea"], "oCal's grant expired, oDee unsubscribed");
    for v in &listed {
        assert_eq!(*v, f.store.window(&v.openid, now).await.unwrap());
    }
    assert_eq!((listed[0].pending, listed[0].grants.len()), (2, 1));
    assert_eq!(listed[1].grants.iter().map(|g| g.trigger).collect::<Vec<_>>(), [Trigger::Payment]);
    assert_eq!(listed[1].subscribed, Some(true));
}

#[tokio::test]
async fn kefu_window_cli_reads_the_store_of_a_running_server() {
    let f = Fixture::new();
    let now_ms = SystemClock.now_ms();
    f.store
        .commit_push(push("msg:1", "oMay", WindowEffect::Open(Trigger::Message), now_ms, &[]))
        .await
        .unwrap();
    let run = |args: &[&str]| run_ok(f.dir.path(), args);
    let opened = now_ms / 1000;
    let json = run(&["window", "show", "oMay", "--json"]);
    assert_eq!(
        json,
        format!(
            "{{\"openid\":\"oMay\",\"open\":true,\"subscribed\":true,\"grants\":[{{\"trigger\":\"message\",\"opened_at\":{opened},\"expires_at\":{},\"limit\":5,\"used\":0}}],\"pending\":0,\"held\":0,\"held_answers\":[]}}\n",
            opened + 48 * 3600
        )
    );
    let list = run(&["window", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v.as_array().map(|a| a.len()), Some(1));
    assert_eq!(v[0]["openid"], "oMay");
    let human = run(&["window", "show", "oMay"]);
    assert!(
        human.starts_with("oMay  OPEN  (following, 0 pending, 0 held)\n  message   0/5 used"),
        "{human}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kefu"))
        .args(["window", "show", "not/an/openid"])
        .current_dir(f.dir.path())
        .env("KEFU_STATE_DIR", f.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OpenID must be"));
}

// ---- crash test ------------------------------------------------------------------------------

const CRASH_ENV: &str = "KEFU_TEST_CRASH_DIR";
/// `state.sync` of the child: "normal" answers before fsync, which a kill must not lose either.
const CRASH_SYNC_ENV: &str = "KEFU_TEST_CRASH_SYNC";
const CRASH_WRITERS: u64 = 8;
/// The conversation log is on in the crash tests: a push's log lines are part of its record.
const CRASH_LOG_RETENTION: Duration = Duration::from_secs(86_400);

fn crash_push(i: u64, now_ms: i64) -> PushCommit {
    let mut p = push(
        &format!("msg:{i}"),
        &format!("oCrash{i}"),
        WindowEffect::Open(Trigger::Message),
        now_ms,
        &[("one", 3_600_000), ("two", 3_600_000)],
    );
    p.log = Some(kefu::convlog::LogRecord::push(
        &p.openid,
        now_ms,
        ("text".into(), format!("hello {i}")),
    ));
    p
}

/// The child side of `crash_recovery`: commits pushes from several tasks and prints `ACK i`
/// after each commit returns. Does nothing unless started by the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of crash_recovery"]
async fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_ENV) else { return };
    let sync = match std::env::var(CRASH_SYNC_ENV).as_deref() {
        Ok("normal") => SyncMode::Normal,
        _ => SyncMode::Full,
    };
    let store = Arc::new(
        open_store(Path::new(&dir), &WindowConfig::default(), sync, Arc::new(SystemClock)).unwrap(),
    );
    store.configure_log(CRASH_LOG_RETENTION, true);
    let deadline = Instant::now() + Duration::from_secs(60);
    let tasks: Vec<_> = (0..CRASH_WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut i = w;
                while Instant::now() < deadline {
                    let out = store.commit_push(crash_push(i, SystemClock.now_ms())).await.unwrap();
                    assert!(matches!(out, CommitOutcome::Fresh { .. }));
                    println!("ACK {i}");
                    i += CRASH_WRITERS;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery_keeps_every_acknowledged_commit_exactly_once() {
    let (dir, acked) = crash_and_collect("full", 400);
    check_after_crash(dir.path(), &acked, true).await;
}

/// `state.sync = "normal"` answers once the commit is in the OS cache: a SIGKILL of kefu
/// (unlike a power cut) must still lose nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery_with_sync_normal_keeps_every_acknowledged_commit() {
    let (dir, acked) = crash_and_collect("normal", 400);
    check_after_crash(dir.path(), &acked, true).await;
}

/// Runs `crash_child` until it has acknowledged `at_least` pushes, then SIGKILLs it (no
/// destructor, no flush, no checkpoint, no commit of the open transaction) and returns its
/// state dir and the pushes it acknowledged.
fn crash_and_collect(
    sync: &str,
    at_least: usize,
) -> (tempfile::TempDir, std::collections::BTreeSet<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["state::crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CRASH_ENV, dir.path())
        .env(CRASH_SYNC_ENV, sync)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.strip_prefix("ACK ").and_then(|n| n.trim().parse().ok()) {
                let _ = tx.send(i);
            }
        }
    });
    let mut acked = std::collections::BTreeSet::new();
    while acked.len() < at_least {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(i) => {
                acked.insert(i);
            }
            Err(e) => panic!("child stopped acknowledging after {} commits: {e}", acked.len()),
        }
    }
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    reader.join().unwrap();
    // Lines written before the kill are acknowledgements too.
    acked.extend(rx.try_iter());
    (dir, acked)
}

/// Opens the state a killed child left and checks every push: an acknowledged one is there
/// exactly once (dedupe record and stored answer, one grant, its two outbox entries, its two
/// log lines); any push is all or nothing. `expect_replay`: the kill came while SQLite held
/// acknowledged pushes it had not committed, so opening ran journal records again.
async fn check_after_crash(
    dir: &Path,
    acked: &std::collections::BTreeSet<u64>,
    expect_replay: bool,
) {
    let max = *acked.last().unwrap();
    let store =
        open_store(dir, &WindowConfig::default(), SyncMode::Full, Arc::new(SystemClock)).unwrap();
    store.configure_log(CRASH_LOG_RETENTION, true);
    let replayed = store.replayed_at_open();
    if expect_replay {
        assert!(replayed > 0, "the kill left nothing to replay: the test did not test recovery");
    }
    let now = SystemClock.now_secs();
    let mut unacked_present = 0;
    for i in 0..=max + 2 * CRASH_WRITERS {
        let who = oid(&format!("oCrash{i}"));
        let w = store.window(&who, now).await.unwrap();
        let entries = store.pending_for(&who).await.unwrap();
        let log = store.log_show(&who, None).await.unwrap();
        let present = !w.grants.is_empty();
        // All or nothing, and never twice.
        assert_eq!(entries.len(), if present { 2 } else { 0 }, "push {i}: {w:?} {entries:?}");
        assert_eq!(log.len(), if present { 2 } else { 0 }, "push {i}'s log: {log:?}");
        if present {
            assert_eq!(w.grants.len(), 1);
            assert_eq!((w.grants[0].trigger, w.grants[0].used), (Trigger::Message, 0));
            assert!(entries.iter().all(|e| e.push_key == format!("msg:{i}")));
            assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1]);
            assert_eq!(log[0].text, format!("hello {i}"), "{log:?}");
        }
        if acked.contains(&i) {
            assert!(present, "acknowledged push {i} was lost");
            assert_eq!(
                store.commit_push(crash_push(i, SystemClock.now_ms())).await.unwrap(),
                CommitOutcome::Duplicate {
                    answer: Some(PassiveReply::text(format!("answer to msg:{i}")))
                },
                "acknowledged push {i} lost its dedupe record"
            );
        } else if present {
            unacked_present += 1;
        }
    }
    // Outbox ids are unique: no entry was written twice under two ids either.
    let all = store.outbox_overview(0).await.unwrap();
    let ids: std::collections::BTreeSet<i64> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), all.len());
    eprintln!(
        "crash test: {} acknowledged commits all present once ({replayed} journal records \
         replayed at open); {unacked_present} committed but unacknowledged at the kill",
        acked.len()
    );
}

/// The last segment of a state dir's journal.
fn last_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .collect();
    segs.sort();
    segs.pop().expect("a journal segment")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A record cut short at the end of the journal (the crash came in the middle of a write) was
/// never acknowledged: it is dropped and the rest replayed. A record damaged in the middle
/// holds acknowledged data: opening refuses, naming the segment and the offset, until told to
/// truncate there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_tail_is_dropped_and_a_damaged_middle_refuses_to_open() {
    let (dir, acked) = crash_and_collect("full", 200);
    let damaged = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), damaged.path());

    // Torn: half a record after the last whole one.
    let seg = last_segment(dir.path());
    let mut torn = Vec::new();
    torn.extend_from_slice(&400u32.to_le_bytes());
    torn.extend_from_slice(&[0xAB; 4 + 8 + 40]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);
    check_after_crash(dir.path(), &acked, true).await;

    // Damaged in the middle: one flipped byte in the first record the database lacks, with
    // whole records after it.
    let seg = last_segment(damaged.path());
    let watermark: u64 = rusqlite::Connection::open(damaged.path().join("kefu.sqlite3"))
        .unwrap()
        .query_row("SELECT seq FROM journal_applied", [], |r| r.get::<_, i64>(0))
        .map_or(0, |s| s as u64);
    let mut bytes = std::fs::read(&seg).unwrap();
    let (mut at, mut after) = (0usize, 0);
    let mut target = None;
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        if seq == watermark + 1 {
            target = Some(at);
        }
        if seq > watermark + 1 {
            after += 1;
        }
        at += kefu::store::sqlite::journal::HEADER_BYTES + len;
    }
    let target = target.expect("the kill left records the database lacks");
    assert!(after >= 1, "a whole record must follow the damaged one");
    bytes[target + kefu::store::sqlite::journal::HEADER_BYTES + 3] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let err = open_store(damaged.path(), &WindowConfig::default(), SyncMode::Full, clock.clone())
        .unwrap_err()
        .to_string();
    let name = seg.file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains(&name) && err.contains(&format!("byte offset {target}")), "{err}");
    assert!(err.contains("--truncate-journal") && err.contains("acknowledged pushes"), "{err}");
    // Refusing changed nothing: the same error again, the segment as it was.
    let again = open_store(damaged.path(), &WindowConfig::default(), SyncMode::Full, clock.clone())
        .unwrap_err()
        .to_string();
    assert_eq!(err, again);
    // A command refuses too: a change it made now could be undone once the journal runs.
    let cli = SqliteStore::open_client(damaged.path(), &WindowConfig::default(), clock.clone());
    assert!(cli.is_err_and(|e| e.to_string().contains(&name)), "a command opened the state");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    // Told to truncate: it opens, with the journal cut at the damage.
    let opts = kefu::store::sqlite::OpenOptions {
        window: WindowConfig::default(),
        dedupe_retention_secs: RETENTION,
        sync: SyncMode::Full,
        owner: true,
        truncate_journal: true,
    };
    let store = SqliteStore::open_with(damaged.path(), opts, clock).unwrap();
    assert_eq!(store.replayed_at_open(), 0);
    store.close();
}

/// The kept turns of `openai` backends (interface §7.6): per backend and follower, trimmed to
/// `keep` and the ttl, shown and cleared by `kefu history` beside a running server.
#[tokio::test]
async fn kept_turns_are_per_follower_trimmed_and_shown_by_kefu_history() {
    use kefu::llm::Turn;
    let f = Fixture::new();
    let now_ms = SystemClock.now_ms();
    let turn = |i: i64, who: &str| Turn {
        at_ms: now_ms - 10_000 + i,
        user: format!("{who} 问 {i}"),
        assistant: format!("答 {i}"),
    };
    for i in 0..4 {
        f.store
            .add_turn("assistant", &oid("oAmy"), turn(i, "amy"), 3, now_ms - 60_000)
            .await
            .unwrap();
    }
    f.store.add_turn("assistant", &oid("oBen"), turn(9, "ben"), 3, now_ms - 60_000).await.unwrap();
    let amy = f.store.turns(Some("assistant"), &oid("oAmy")).await.unwrap();
    assert_eq!(
        amy.iter().map(|(_, t)| t.user.as_str()).collect::<Vec<_>>(),
        ["amy 问 1", "amy 问 2", "amy 问 3"]
    );
    // A turn at or before the oldest kept time makes the others go too.
    f.store.add_turn("assistant", &oid("oAmy"), turn(100, "amy"), 3, now_ms - 9_950).await.unwrap();
    let amy = f.store.turns(None, &oid("oAmy")).await.unwrap();
    assert_eq!(amy.len(), 1, "{amy:?}");

    let run = |args: &[&str]| run_ok(f.dir.path(), args);
    let shown: serde_json::Value =
        serde_json::from_str(&run(&["history", "show", "oBen", "--json"])).unwrap();
    assert_eq!(
        shown,
        serde_json::json!([{"backend": "assistant", "at_ms": now_ms - 10_000 + 9, "user": "ben 问 9", "assistant": "答 9"}])
    );
    assert!(run(&["history", "show", "oBen"]).contains("[assistant]"));
    assert_eq!(run(&["history", "clear", "oBen"]), "oBen: forgot 1 kept turns\n");
    assert!(run(&["history", "show", "oBen"]).contains("no kept turns"));
    assert_eq!(f.store.turns(None, &oid("oAmy")).await.unwrap().len(), 1, "only oBen's are gone");
}

/// Runs `kefu ARGS` on the state in `dir` (as `KEFU_STATE_DIR`); its stdout, or a panic with
/// its stderr when it fails.
fn run_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kefu"))
        .args(args)
        .current_dir(dir)
        .env("KEFU_STATE_DIR", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A write from another process (here a client store, as `kefu send` opens it) beside a
/// serving store whose open transaction holds acknowledged pushes: the server commits first
/// (the knock), so the charge sees the push's grant, and the server's next write keeps the
/// charge instead of writing over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_charge_beside_the_server_sees_the_push_acknowledged_a_moment_ago() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let server =
        open_store(dir.path(), &WindowConfig::default(), SyncMode::Full, clock.clone()).unwrap();
    let cli =
        SqliteStore::open_client(dir.path(), &WindowConfig::default(), clock.clone()).unwrap();
    let now_ms = SystemClock.now_ms();
    // A stream of pushes keeps the server's writer busy (its transaction is never idle long).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let who = format!("oKnockLoad{}", i % 50);
                let p = push(
                    &format!("msg:load{i}"),
                    &who,
                    WindowEffect::Open(Trigger::Message),
                    now_ms,
                    &[],
                );
                server.commit_push(p).await.unwrap();
                i += 1;
            }
            i
        })
    };
    for round in 0..20 {
        let who = oid(&format!("oKnock{round}"));
        let p = push(
            &format!("msg:k{round}"),
            who.as_str(),
            WindowEffect::Open(Trigger::Message),
            now_ms,
            &[],
        );
        assert!(matches!(server.commit_push(p).await.unwrap(), CommitOutcome::Fresh { .. }));
        // No pause: the server's transaction is still open when the CLI writes. Its write
        // gets in at once, not after the server happens to go idle.
        let started = Instant::now();
        let charged = cli.charge(&who, now_ms / 1000).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "round {round}: the CLI waited {:?}",
            started.elapsed()
        );
        assert!(matches!(charged, ChargeOutcome::Allowed { .. }), "round {round}: {charged:?}");
        let p2 = push(&format!("msg:k{round}b"), who.as_str(), WindowEffect::None, now_ms, &[]);
        server.commit_push(p2).await.unwrap();
        let w = server.window(&who, now_ms / 1000).await.unwrap();
        assert_eq!(w.grants[0].used, 1, "round {round}: the server wrote over the charge");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(busy.await.unwrap() > 20, "the server was not kept busy");
    server.close();
}

/// A push that took a held answer as its passive reply, acknowledged but not yet committed to
/// SQLite when the process died, is run again at the start with the same mailbox: the
/// redelivery gets the same answer and the held answer is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_push_delivers_the_held_answer_the_live_one_delivered() {
    let mut replayed_runs = 0;
    for attempt in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = Arc::new(SystemClock);
        let open = || {
            open_store(dir.path(), &WindowConfig::default(), SyncMode::Full, clock.clone()).unwrap()
        };
        let store = open();
        let now_ms = SystemClock.now_ms();
        let who = "oReplayHeld";
        let mut p1 =
            push("msg:h1", who, WindowEffect::Open(Trigger::Message), now_ms, &[("later", 0)]);
        p1.passive = None;
        p1.terms.customer_service = false;
        let CommitOutcome::Fresh { delivery, .. } = store.commit_push(p1).await.unwrap() else {
            panic!("p1 is fresh")
        };
        assert_eq!(delivery.held, 1);
        store.list_windows(now_ms / 1000).await.unwrap(); // a read: SQLite commits p1
        let mut p2 = push("msg:h2", who, WindowEffect::Open(Trigger::Message), now_ms + 1, &[]);
        p2.passive = None;
        p2.terms.customer_service = false;
        let CommitOutcome::Fresh { delivery, .. } = store.commit_push(p2.clone()).await.unwrap()
        else {
            panic!("p2 is fresh")
        };
        store.abandon(); // as SIGKILL: p2 is only in the journal (unless SQLite committed it)
        let live = delivery.passive.expect("the held answer is p2's passive reply");
        drop(store);

        let store = open();
        replayed_runs += usize::from(store.replayed_at_open() > 0);
        assert_eq!(
            store.commit_push(p2).await.unwrap(),
            CommitOutcome::Duplicate { answer: Some(live.clone()) },
            "attempt {attempt}: the redelivery's answer"
        );
        let w = store.window(&oid(who), now_ms / 1000).await.unwrap();
        assert_eq!(w.held, 0, "attempt {attempt}: the held answer was delivered once");
        store.close();
        if replayed_runs > 0 {
            break;
        }
    }
    assert!(replayed_runs > 0, "no attempt left p2 to the journal: recovery was not tested");
}

/// After a crash, a command run while no server runs first runs what the journal holds: it
/// shows every acknowledged push, and an erasure it makes is not undone by the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_after_a_crash_runs_the_journal_first() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let retention = Duration::from_secs(86_400);
    let mut replayed_runs = 0;
    for attempt in 0..5 {
        let who = oid(&format!("oAfterCrash{attempt}"));
        let server =
            open_store(dir.path(), &WindowConfig::default(), SyncMode::Full, clock.clone())
                .unwrap();
        server.configure_log(retention, true);
        let now_ms = SystemClock.now_ms();
        let mut p = crash_push(attempt, now_ms);
        p.openid = who.clone();
        p.log.as_mut().unwrap().openid = who.clone();
        server.commit_push(p).await.unwrap();
        server.abandon(); // as SIGKILL, most likely before SQLite committed the push
        drop(server);

        let cli =
            SqliteStore::open_client(dir.path(), &WindowConfig::default(), clock.clone()).unwrap();
        cli.configure_log(retention, true);
        assert_eq!(cli.log_show(&who, None).await.unwrap().len(), 2, "attempt {attempt}");
        assert_eq!(cli.log_delete(&who).await.unwrap(), 2);
        replayed_runs += usize::from(cli.replayed_at_open() > 0);
        drop(cli);

        let server =
            open_store(dir.path(), &WindowConfig::default(), SyncMode::Full, clock.clone())
                .unwrap();
        server.configure_log(retention, true);
        assert_eq!(server.replayed_at_open(), 0, "attempt {attempt}: the journal ran twice");
        assert!(server.log_show(&who, None).await.unwrap().is_empty(), "the erasure came back");
        server.close();
        if replayed_runs > 0 {
            break;
        }
    }
    assert!(replayed_runs > 0, "no attempt left the push to the journal: recovery was not tested");
}
