//! The intake: the one conversion from what arrived — a push at the server URL, or a verified
//! WeChat Pay notification — to what the pipeline needs ([`Intake`]): the dedupe key (computed
//! once), the follower's OpenId (parsed once), the window effect (which trigger a push opens:
//! policy, so it lives here and not in the protocol module) and the rule input (what the rules
//! see, [`crate::rules::input`]). `kefu serve`, payments and `kefu simulate` all build their
//! intake here, so `simulate` shows exactly what `serve` does.

use crate::backends::PushFacts;
use crate::model::{DedupeKey, OpenId, RuleInput, Trigger, WindowEffect};
use crate::pay::Payment;
use crate::rules;
use crate::wechat::inbound::{Event, Push, PushKind};

/// What one push or payment asks of the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intake {
    pub dedupe_key: DedupeKey,
    pub openid: OpenId,
    pub effect: WindowEffect,
    pub input: RuleInput,
    /// When it arrived, Unix ms.
    pub received_at_ms: i64,
    /// Whether the answer can carry a passive reply (pushes yes, payment notifications no).
    pub passive_allowed: bool,
    /// Whether a transfer to human service is allowed (user messages only, protocol §7.4).
    pub transfer_allowed: bool,
    /// A label for logs and metrics: the MsgType or Event (`payment` for payments).
    pub kind: String,
    /// The push's `ToUserName` (`gh_…`; empty for payments): a backend request's `account`.
    pub account: String,
    /// What a backend request carries of the push (interface §7.3 `push`, captures empty).
    pub facts: PushFacts,
    /// What the conversation log records of it: its kind and its text or summary
    /// ([`crate::convlog::summarize`]).
    pub summary: (String, String),
}

/// A push whose `FromUserName` is not an OpenID (a system sender): acknowledged, nothing
/// recorded, since there is no follower to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotAFollower {
    pub from: String,
    /// The MsgType or Event, as [`Intake::kind`].
    pub kind: String,
}

impl Intake {
    /// A push at the server URL. A `user_pay_from_pay_cell` push is a payment to the rules
    /// (`event = "payment"`) and opens the payment grant.
    pub fn from_push(push: &Push, received_at_ms: i64) -> Result<Intake, NotAFollower> {
        let input = rules::input::of_push(push);
        let kind = input.event.clone().unwrap_or_else(|| input.msg_type.clone());
        let Ok(openid) = OpenId::parse(&push.from) else {
            return Err(NotAFollower { from: push.from.clone(), kind });
        };
        Ok(Intake {
            dedupe_key: push.dedupe_key(),
            openid,
            effect: window_effect(push),
            transfer_allowed: push.is_user_message(),
            input,
            received_at_ms,
            passive_allowed: true,
            kind,
            account: push.to.clone(),
            facts: push_facts(push),
            summary: crate::convlog::summarize(push),
        })
    }

    /// A verified WeChat Pay notification (v2 or v3): it opens the payer's payment grant and
    /// fires `event = "payment"` rules; it has no passive answer.
    pub fn from_payment(payment: &Payment, received_at_ms: i64) -> Intake {
        Intake {
            dedupe_key: DedupeKey::payment(
                payment.appid.as_deref(),
                &payment.openid,
                &payment.transaction_id,
            ),
            openid: payment.openid.clone(),
            effect: WindowEffect::Open(Trigger::Payment),
            input: rules::input::of_payment(payment),
            received_at_ms,
            passive_allowed: false,
            transfer_allowed: false,
            kind: "payment".into(),
            account: String::new(),
            facts: PushFacts {
                msgtype: "event".into(),
                event: Some("payment".into()),
                ..PushFacts::default()
            },
            summary: crate::convlog::payment_summary(
                &crate::pay::format_yuan(payment.amount_fen),
                &payment.transaction_id,
            ),
        }
    }
}

/// The `push` of a backend request (interface §7.3, §11.1): every field WeChat sent that a
/// backend may use, `None` where the push has none.
pub fn push_facts(push: &Push) -> PushFacts {
    let mut f = PushFacts {
        msgtype: push.msg_type.clone(),
        msg_id: push.msg_id().map(|id| id.to_string()),
        event: push.event().map(str::to_string),
        event_key: push.event_key(),
        ..PushFacts::default()
    };
    let location = |lat: &Option<f64>, lon: &Option<f64>, scale: &Option<f64>, label: &str| {
        serde_json::json!({
            "latitude": lat, "longitude": lon, "scale": scale,
            "label": Some(label).filter(|l| !l.is_empty()),
        })
    };
    match &push.kind {
        PushKind::Text { content, .. } => f.content = Some(content.clone()),
        PushKind::Image { pic_url, media_id, .. } => {
            f.pic_url = Some(pic_url.clone());
            f.media_id = Some(media_id.clone());
        }
        PushKind::Voice { media_id, recognition, .. } => {
            f.media_id = Some(media_id.clone());
            f.recognition = recognition.clone();
        }
        PushKind::Video { media_id, .. } | PushKind::ShortVideo { media_id, .. } => {
            f.media_id = Some(media_id.clone())
        }
        PushKind::Location { latitude, longitude, scale, label, .. } => {
            f.location = Some(location(latitude, longitude, scale, label))
        }
        PushKind::Link { url, title, .. } => f.content = Some(format!("{title} {url}")),
        PushKind::Event(Event::Location { latitude, longitude, .. }) => {
            f.location = Some(location(latitude, longitude, &None, ""))
        }
        _ => {}
    }
    f
}

/// What a push does to the follower's window (protocol §4.1, interface §6.5): a message opens
/// the message grant; CLICK, scancode_push and scancode_waitmsg the menu grant; a follow the
/// subscribe grant, or the scan grant through a parametric QR code (`qrscene_…`), or marks the
/// follower subscribed and opens the payment grant through a payment QR (`last_trade_no_…`);
/// SCAN the scan grant; a pay-cell payment the payment grant; unsubscribe closes everything.
/// Every other kind, unknown ones included, opens nothing.
pub fn window_effect(push: &Push) -> WindowEffect {
    if push.is_user_message() {
        return WindowEffect::Open(Trigger::Message);
    }
    let PushKind::Event(e) = &push.kind else { return WindowEffect::None };
    match e {
        Event::Subscribe { event_key, .. } => {
            let key = event_key.as_deref().unwrap_or("");
            if key.starts_with("qrscene_") {
                WindowEffect::Open(Trigger::Scan)
            } else if key.starts_with("last_trade_no_") {
                WindowEffect::Follow(Trigger::Payment)
            } else {
                WindowEffect::Open(Trigger::Subscribe)
            }
        }
        Event::Scan { .. } => WindowEffect::Open(Trigger::Scan),
        Event::Click { .. } | Event::ScancodePush { .. } | Event::ScancodeWaitmsg { .. } => {
            WindowEffect::Open(Trigger::Menu)
        }
        Event::UserPayFromPayCell { .. } => WindowEffect::Open(Trigger::Payment),
        Event::Unsubscribe => WindowEffect::CloseAll,
        _ => WindowEffect::None,
    }
}
