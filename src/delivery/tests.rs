use super::*;
use std::time::Duration;

fn text(s: &str) -> OutMessage {
    OutMessage::Text { content: s.into() }
}

fn entry(s: &str) -> NewOutboxEntry {
    NewOutboxEntry {
        rule: "r".into(),
        seq: 0,
        action: PlannedAction {
            rule: "r".into(),
            action: OutboxAction::Send { message: text(s) },
            delay: Duration::ZERO,
            kf_account: None,
            source: Default::default(),
        },
        due_at_ms: 1_000,
    }
}

fn held(id: i64, s: &str, expires_at_ms: i64) -> HeldAnswer {
    HeldAnswer {
        id,
        openid: OpenId::parse("oFollower0000000000000000001").unwrap(),
        rule: "r".into(),
        action: entry(s).action,
        push_key: "m:1:1:o:gh".into(),
        reason: "quota used up".into(),
        held_at_ms: 0,
        expires_at_ms,
    }
}

fn own(s: &str) -> Option<OwnPassive> {
    Some(OwnPassive {
        rule: "r".into(),
        reply: PassiveReply::Message { message: text(s) },
        source: Default::default(),
    })
}

fn terms(customer_service: bool) -> Terms {
    Terms { customer_service, more_text: "+".into(), hold_for_ms: 1000, ..Terms::default() }
}

fn texts(es: &[NewOutboxEntry]) -> Vec<String> {
    es.iter()
        .map(|e| match &e.action.action {
            OutboxAction::Send { message: OutMessage::Text { content } } => content.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn passive_text(a: &Assignment) -> Option<String> {
    match &a.passive {
        Some(PassiveReply::Message { message: OutMessage::Text { content } }) => {
            Some(content.clone())
        }
        _ => None,
    }
}

#[test]
fn eight_parts_with_a_quota_of_five() {
    let parts: Vec<NewOutboxEntry> = (2..=8).map(|i| entry(&format!("p{i}"))).collect();
    let a = assign(&[], own("p1"), parts, Some(5), &terms(true), 1_000);
    assert_eq!(passive_text(&a).as_deref(), Some("p1"));
    assert_eq!(texts(&a.outbox), ["p2", "p3", "p4", "p5", "p6+"]);
    assert_eq!(texts(&a.hold), ["p7", "p8"]);
    assert_eq!(a.outbox.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);

    // The next push: p7 passively, p8 through custom/send, then the push's own answer.
    let mailbox = [held(7, "p7", 10_000), held(8, "p8", 10_000)];
    let b = assign(&mailbox, own("own"), vec![], Some(5), &terms(true), 2_000);
    assert_eq!(passive_text(&b).as_deref(), Some("p7"));
    assert_eq!(b.passive_from_held, Some(7));
    assert_eq!(b.released, [8]);
    assert_eq!(texts(&b.outbox), ["p8", "own"]);
    assert!(b.hold.is_empty());
    assert_eq!(b.delivered_from_held(), 2);
}

#[test]
fn customer_service_off_holds_everything_after_the_passive_answer() {
    let a = assign(&[], own("a"), vec![entry("b"), entry("c")], None, &terms(false), 1_000);
    assert_eq!(passive_text(&a).as_deref(), Some("a+"), "more_text: answers stay held");
    assert!(a.outbox.is_empty());
    assert_eq!(texts(&a.hold), ["b", "c"]);

    let mailbox = [held(1, "b", 10_000), held(2, "c", 10_000)];
    let b = assign(&mailbox, own("a"), vec![], None, &terms(false), 2_000);
    assert_eq!(passive_text(&b).as_deref(), Some("b+"));
    assert_eq!(texts(&b.hold), ["a"], "the push's own answer waits behind the held ones");
    let c = assign(&mailbox[1..], None, vec![], None, &terms(false), 3_000);
    assert_eq!(passive_text(&c).as_deref(), Some("c"), "nothing left held: no more_text");
}

#[test]
fn a_held_answer_before_a_backends_answer_that_will_be_held_ends_with_more_text() {
    // The push forwards (its answer comes later and cannot go through custom/send), and the
    // mailbox's answer is its passive reply: the follower is told more is coming.
    let coming = Terms { answer_coming: true, ..terms(false) };
    let a = assign(&[held(1, "old", 10_000)], None, vec![], None, &coming, 2_000);
    assert_eq!(passive_text(&a).as_deref(), Some("old+"));
    // Nothing held before it: the backend's answer itself may be the passive reply.
    let b = assign(&[], None, vec![], None, &coming, 2_000);
    assert!(b.passive.is_none());
}

#[test]
fn expired_answers_are_dropped_not_delivered() {
    let mailbox = [held(1, "old", 1_500), held(2, "new", 9_000)];
    let a = assign(&mailbox, None, vec![], Some(5), &terms(true), 2_000);
    assert_eq!(a.expired, [1]);
    assert_eq!(passive_text(&a).as_deref(), Some("new"));
}

#[test]
fn a_transfer_keeps_the_passive_slot() {
    let transfer = Some(OwnPassive {
        rule: "human".into(),
        reply: PassiveReply::Transfer { kf_account: None },
        source: Default::default(),
    });
    let a = assign(&[held(1, "h", 9_000)], transfer, vec![], Some(5), &terms(true), 1_000);
    assert!(matches!(a.passive, Some(PassiveReply::Transfer { .. })));
    assert_eq!(a.released, [1]);
}

#[test]
fn no_passive_slot_means_custom_send_or_hold() {
    let t = Terms { passive_slot: false, ..terms(true) };
    let a = assign(&[held(1, "h", 9_000)], None, vec![entry("x")], Some(1), &t, 1_000);
    assert_eq!(a.passive, None);
    assert_eq!(texts(&a.outbox), ["h+"]);
    assert_eq!(texts(&a.hold), ["x"]);
}

#[test]
fn refusals_that_hold() {
    let auto = CustomerService::new(CustomerServiceMode::Auto);
    assert!(auto.allowed());
    assert_eq!(auto.on_refusal(Some(45047)), OnRefusal::Hold);
    assert!(auto.allowed(), "45047 holds one follower, not the account");
    assert_eq!(auto.on_refusal(Some(40001)), OnRefusal::Fail);
    assert_eq!(auto.on_refusal(Some(48001)), OnRefusal::Hold);
    assert!(!auto.allowed());
    assert_eq!(auto.refused_with(), Some(48001));
    let on = CustomerService::new(CustomerServiceMode::On);
    assert_eq!(on.on_refusal(Some(48001)), OnRefusal::Fail);
    assert!(on.allowed(), "under \"on\" custom/send is still called after a 48001");
    assert!(!CustomerService::new(CustomerServiceMode::Off).allowed());
}

fn menu_entry() -> NewOutboxEntry {
    let mut e = entry("");
    e.action.action = OutboxAction::Send {
        message: OutMessage::MsgMenu {
            head_content: "h".into(),
            list: vec![],
            tail_content: "t".into(),
        },
    };
    e
}

#[test]
fn without_custom_send_what_no_passive_reply_carries_is_dropped_not_held() {
    let a = assign(&[], own("a"), vec![menu_entry(), entry("b")], None, &terms(false), 1_000);
    assert_eq!(a.undeliverable_own, 1, "a menu can never be a passive reply");
    assert_eq!(texts(&a.hold), ["b"]);
    let mut menu = held(1, "", 9_000);
    menu.action = menu_entry().action;
    let mailbox = [menu, held(2, "x", 9_000)];
    let b = assign(&mailbox, own("own"), vec![], None, &terms(false), 2_000);
    assert_eq!(b.undeliverable, [1]);
    assert_eq!(passive_text(&b).as_deref(), Some("x+"), "own is held: more_text");
}

#[test]
fn a_held_answer_no_passive_reply_carries_keeps_its_place_in_line() {
    let mut menu = held(1, "", 9_000);
    menu.action = menu_entry().action;
    let mailbox = [menu, held(2, "x", 9_000)];
    let a = assign(&mailbox, own("own"), vec![], Some(5), &terms(true), 2_000);
    assert_eq!(a.passive, None, "nothing passive may overtake the menu");
    assert_eq!(a.released, [1, 2]);
    assert_eq!(texts(&a.outbox)[1..], ["x", "own"]);
}
