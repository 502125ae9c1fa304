//! What the rules see of a push or a payment (interface §4, §6.7): the one place that decides
//! it. `kefu serve` (through the pipeline's intake), `kefu simulate`, the rule files' `[[test]]`
//! cases and `kefu rules import` all come here, and the commands and tests that play WeChat's
//! part build a real push first ([`crate::wechat::inbound::build`]), so none of them can see a
//! push differently from `serve`.

use crate::model::RuleInput;
use crate::pay::{Payment, check_transaction_id, format_yuan};
use crate::wechat::inbound::{Event, Push, PushKind, build};

/// The `ToUserName` of the pushes built for `[[test]]` cases, `simulate` and `import` probes
/// when no original ID is configured; rules never look at it.
pub const SIMULATED_ACCOUNT: &str = "gh_simulated";

/// The rule input of a push. A text message gives its text (and `menu_choice` for a msgmenu
/// tap), a voice message its `Recognition`; a follow through a parametric QR code
/// (`qrscene_…`) or a SCAN gives the scene; a follow through a payment QR (`last_trade_no_…`)
/// gives `{trans_id}`; a `user_pay_from_pay_cell` push is a payment (`event = "payment"`, as
/// [`of_payment`], with the pay cell's amount and `TransId`).
pub fn of_push(push: &Push) -> RuleInput {
    if let PushKind::Event(Event::UserPayFromPayCell { trans_id, fee, .. }) = &push.kind
        && let Ok(transaction_id) = check_transaction_id(trans_id)
    {
        let fee = u64::try_from(fee.unwrap_or(0)).unwrap_or(0);
        return payment(&push.from, fee, "CNY", "", &transaction_id, None);
    }
    let mut input = RuleInput {
        from: push.from.clone(),
        msg_type: push.msg_type.clone(),
        event: push.event().map(str::to_string),
        event_key: push.event_key(),
        ..RuleInput::default()
    };
    match &push.kind {
        PushKind::Text { content, bizmsgmenuid, .. } => {
            input.text = Some(content.clone());
            input.menu_choice = bizmsgmenuid.clone();
        }
        PushKind::Voice { recognition, .. } => input.text = recognition.clone(),
        PushKind::Event(Event::Subscribe { event_key: Some(key), .. }) => {
            if let Some(scene) = key.strip_prefix("qrscene_") {
                input.scene = Some(scene.to_string());
            } else if let Some(trans) = key.strip_prefix("last_trade_no_") {
                input.vars.push(("trans_id".into(), trans.to_string()));
            }
        }
        PushKind::Event(Event::Scan { event_key, .. }) if !event_key.is_empty() => {
            input.scene = Some(event_key.clone());
        }
        PushKind::Event(Event::UserPayFromPayCell { trans_id, fee, .. }) => {
            // A TransId that is no transaction id: an ordinary event, with what it carries.
            if let Some(fee) = fee {
                input.vars.push(("amount".into(), fee.to_string()));
            }
            input.vars.push(("trans_id".into(), trans_id.clone()));
        }
        _ => {}
    }
    input
}

/// What a verified payment looks like to rules: an `event` push with event `payment` from the
/// payer, with placeholders `{amount}` (fen), `{amount_yuan}`, `{currency}`,
/// `{out_trade_no}`, `{transaction_id}` and, when present, `{attach}`.
pub fn of_payment(p: &Payment) -> RuleInput {
    payment(
        p.openid.as_str(),
        p.amount_fen,
        &p.currency,
        &p.out_trade_no,
        &p.transaction_id,
        p.attach.as_deref(),
    )
}

fn payment(
    from: &str,
    amount_fen: u64,
    currency: &str,
    out_trade_no: &str,
    transaction_id: &str,
    attach: Option<&str>,
) -> RuleInput {
    let mut vars = vec![
        ("amount".to_string(), amount_fen.to_string()),
        ("amount_yuan".to_string(), format_yuan(amount_fen)),
        ("currency".to_string(), currency.to_string()),
        ("out_trade_no".to_string(), out_trade_no.to_string()),
        ("transaction_id".to_string(), transaction_id.to_string()),
    ];
    if let Some(a) = attach {
        vars.push(("attach".to_string(), a.to_string()));
    }
    RuleInput {
        from: from.to_string(),
        msg_type: "event".into(),
        event: Some("payment".into()),
        vars,
        ..RuleInput::default()
    }
}

/// The rule input of a text message from `from`, as the push WeChat would send
/// (`kefu simulate --text`, `[[test]] text`). Errors when the text cannot travel in a push
/// (a control character XML forbids).
pub fn text(from: &str, text: &str) -> Result<RuleInput, String> {
    build::text(SIMULATED_ACCOUNT, from, 0, text, 1)
        .map(|p| of_push(&p))
        .map_err(|e| format!("this text cannot be a push: {e}"))
}

/// The rule input of an event `event` (with `EventKey` `key`) from `from`, as the push WeChat
/// would send (`kefu simulate --event`, `[[test]] event`). `payment` is no push but the
/// payment notification's event: its placeholders come from the caller.
pub fn event(from: &str, event: &str, key: Option<&str>) -> Result<RuleInput, String> {
    if event == "payment" {
        return Ok(RuleInput {
            from: from.to_string(),
            msg_type: "event".into(),
            event: Some("payment".into()),
            event_key: key.map(str::to_string),
            ..RuleInput::default()
        });
    }
    build::event(SIMULATED_ACCOUNT, from, 0, event, key)
        .map(|p| of_push(&p))
        .map_err(|e| format!("this event cannot be a push: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OpenId;
    use crate::pay::PaymentSource;

    fn payment() -> Payment {
        Payment {
            transaction_id: "4200001".into(),
            out_trade_no: "order-7".into(),
            openid: OpenId::parse("oUser").unwrap(),
            appid: Some("wx1".into()),
            amount_fen: 1,
            currency: "CNY".into(),
            attach: Some("a".into()),
            paid_at: "20140903131540".into(),
            source: PaymentSource::V2,
        }
    }

    fn var<'a>(r: &'a RuleInput, k: &str) -> Option<&'a str> {
        r.vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_payment_is_a_payment_event() {
        let r = of_payment(&payment());
        assert_eq!(r.from, "oUser");
        assert_eq!(r.msg_type, "event");
        assert_eq!(r.event.as_deref(), Some("payment"));
        assert_eq!(r.text, None);
        assert_eq!(var(&r, "amount"), Some("1"));
        assert_eq!(var(&r, "amount_yuan"), Some("0.01"));
        assert_eq!(var(&r, "out_trade_no"), Some("order-7"));
        assert_eq!(var(&r, "transaction_id"), Some("4200001"));
        assert_eq!(var(&r, "attach"), Some("a"));
    }

    #[test]
    fn a_pay_cell_push_is_a_payment_and_a_bad_trans_id_an_event() {
        let xml = |trans: &str| {
            format!(
                "<xml><ToUserName>gh_a</ToUserName><FromUserName>oU</FromUserName>\
                 <CreateTime>1</CreateTime><MsgType>event</MsgType>\
                 <Event>user_pay_from_pay_cell</Event><TransId>{trans}</TransId>\
                 <Fee>990</Fee></xml>"
            )
        };
        let push = crate::wechat::inbound::parse(xml("4200002").as_bytes()).unwrap();
        let r = of_push(&push);
        assert_eq!((r.event.as_deref(), r.from.as_str()), (Some("payment"), "oU"));
        assert_eq!(var(&r, "amount_yuan"), Some("9.90"));
        assert_eq!(var(&r, "transaction_id"), Some("4200002"));
        let push = crate::wechat::inbound::parse(xml("a b").as_bytes()).unwrap();
        let r = of_push(&push);
        assert_eq!(r.event.as_deref(), Some("user_pay_from_pay_cell"));
        assert_eq!(var(&r, "trans_id"), Some("a b"));
    }

    /// The scene of a QR follow or SCAN, and a payment QR's trade number, come from one rule,
    /// whether the push is real or built for `[[test]]` and `simulate`.
    #[test]
    fn built_events_see_what_real_ones_do() {
        let r = event("oU", "subscribe", Some("qrscene_42")).unwrap();
        assert_eq!(r.scene.as_deref(), Some("42"));
        assert_eq!(event("oU", "SCAN", Some("42")).unwrap().scene.as_deref(), Some("42"));
        let r = event("oU", "subscribe", Some("last_trade_no_4200009")).unwrap();
        assert_eq!((r.scene.as_deref(), var(&r, "trans_id")), (None, Some("4200009")));
        let r = text("oU", "退款").unwrap();
        assert_eq!((r.msg_type.as_str(), r.text.as_deref()), ("text", Some("退款")));
    }
}
