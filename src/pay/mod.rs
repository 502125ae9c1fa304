//! WeChat Pay result notifications, verified without I/O: v2 (signed XML, protocol §3.5) in
//! [`v2`], v3 (RSA-signed JSON with an AES-256-GCM resource, protocol §3.6) in [`v3`], and the
//! typed [`Payment`] both produce. The HTTP side lives in `http::pay`; recording and
//! deduplicating by transaction id is the `PaymentSink`'s job.

pub mod v2;
pub mod v3;

use serde::{Deserialize, Serialize};

use crate::model::{IdError, OpenId, RuleInput};

/// The largest notification body either version accepts. Real ones are 1–3 KiB; the cap only
/// keeps a hostile sender from making us buffer and parse megabytes.
pub const MAX_NOTIFY_BYTES: usize = 64 * 1024;

/// Where a payment was reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentSource {
    /// `POST /pay/notify/v2`.
    V2,
    /// `POST /pay/notify/v3`.
    V3,
    /// A `user_pay_from_pay_cell` event at the server URL (protocol §3.4).
    PayCell,
}

impl PaymentSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentSource::V2 => "v2",
            PaymentSource::V3 => "v3",
            PaymentSource::PayCell => "pay_cell",
        }
    }
}

/// A verified, successful payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// WeChat Pay's transaction id: the idempotency key (the same notification is delivered
    /// several times, from several servers).
    pub transaction_id: String,
    /// The merchant's order number; empty for a pay-cell payment, which has none.
    pub out_trade_no: String,
    /// The payer, as an OpenID of `appid`.
    pub openid: OpenId,
    /// The app the payer's OpenID belongs to. A payment made through another app (a mini
    /// program, say) carries an OpenID the Official Account cannot message; callers that care
    /// compare this with `wechat.app_id`. `None` for pay-cell payments.
    pub appid: Option<String>,
    /// The order total in fen (v2 `total_fee`, v3 `amount.total`, pay cell `Fee`).
    pub amount_fen: u64,
    /// ISO currency code; `CNY` when the notification leaves it out.
    pub currency: String,
    /// The merchant's `attach` string from the order, if any.
    pub attach: Option<String>,
    /// When it was paid, as WeChat wrote it: v2 `time_end` (`yyyyMMddHHmmss`, Beijing time),
    /// v3 `success_time` (RFC 3339); empty when absent.
    pub paid_at: String,
    pub source: PaymentSource,
}

impl Payment {
    /// A pay-cell payment from a `user_pay_from_pay_cell` push (`TransId`, `FromUserName`,
    /// `Fee`). The push itself was authenticated by the server-URL signature.
    pub fn from_pay_cell(
        trans_id: &str,
        openid: OpenId,
        fee_fen: u64,
        create_time: &str,
    ) -> Result<Payment, PayError> {
        Ok(Payment {
            transaction_id: check_transaction_id(trans_id)?,
            out_trade_no: String::new(),
            openid,
            appid: None,
            amount_fen: fee_fen,
            currency: "CNY".into(),
            attach: None,
            paid_at: create_time.to_string(),
            source: PaymentSource::PayCell,
        })
    }

    /// The amount in yuan with two decimals, `1` fen → `0.01`.
    pub fn amount_yuan(&self) -> String {
        format_yuan(self.amount_fen)
    }

    /// What the payment looks like to rules: an `event` push with event `payment` from the
    /// payer, with placeholders `{amount}` (fen), `{amount_yuan}`, `{currency}`,
    /// `{out_trade_no}`, `{transaction_id}` and, when present, `{attach}`.
    pub fn rule_input(&self) -> RuleInput {
        let mut vars = vec![
            ("amount".to_string(), self.amount_fen.to_string()),
            ("amount_yuan".to_string(), self.amount_yuan()),
            ("currency".to_string(), self.currency.clone()),
            ("out_trade_no".to_string(), self.out_trade_no.clone()),
            ("transaction_id".to_string(), self.transaction_id.clone()),
        ];
        if let Some(a) = &self.attach {
            vars.push(("attach".to_string(), a.clone()));
        }
        RuleInput {
            from: self.openid.as_str().to_string(),
            msg_type: "event".into(),
            event: Some("payment".into()),
            vars,
            ..RuleInput::default()
        }
    }
}

/// `12345` fen → `123.45`.
pub fn format_yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// What a verified notification says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A successful payment: record it and open the payer's `payment` grant.
    Paid(Payment),
    /// Authentic, but not a successful payment (`result_code` FAIL, `trade_state` NOTPAY, a
    /// refund notification, ...). Acknowledged so WeChat Pay stops retrying; nothing recorded.
    NotPaid { transaction_id: Option<String>, reason: String },
}

/// Why a notification was refused. The messages never contain a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayError {
    #[error("the body is {len} bytes; notifications are capped at {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the body is not valid UTF-8")]
    NotUtf8,
    #[error("malformed notification: {0}")]
    Malformed(String),
    #[error("DOCTYPE/ENTITY declarations are refused (XML entity expansion)")]
    Doctype,
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{field}` is invalid: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("sign_type {0:?} is not supported (MD5 or HMAC-SHA256)")]
    UnsupportedSignType(String),
    /// The sign is of another kind than the configured or declared one (protocol §3.5,
    /// `pay.v2_sign_type`); the text says which sides disagree.
    #[error("the sign type does not match: {0}")]
    SignTypeMismatch(String),
    #[error(
        "the signature does not verify: the notification was altered, or it was signed with \
         another key than the configured {0}"
    )]
    BadSignature(&'static str),
    #[error("header `{0}` is missing")]
    MissingHeader(&'static str),
    #[error(
        "timestamp {timestamp} is {skew} s away from this machine's clock (max {max} s, \
         server.max_clock_skew_secs): a replay, or a clock that needs NTP"
    )]
    Stale { timestamp: i64, skew: u64, max: u64 },
    #[error("resource algorithm {0:?} is not supported (AEAD_AES_256_GCM)")]
    UnsupportedAlgorithm(String),
    #[error(
        "the resource does not decrypt with pay.v3_api_key (wrong APIv3 key, or the ciphertext \
         or associated_data was altered)"
    )]
    Decrypt,
}

/// How a refusal maps to an HTTP status class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not authentic (or not provably): 401.
    Unauthenticated,
    /// Not a well-formed notification: 400.
    BadRequest,
    /// Over [`MAX_NOTIFY_BYTES`]: 413.
    TooLarge,
}

impl PayError {
    pub fn refusal(&self) -> Refusal {
        match self {
            PayError::TooLarge { .. } => Refusal::TooLarge,
            PayError::BadSignature(_)
            | PayError::SignTypeMismatch(_)
            | PayError::Missing("sign")
            | PayError::MissingHeader(_)
            | PayError::Stale { .. }
            | PayError::Decrypt => Refusal::Unauthenticated,
            _ => Refusal::BadRequest,
        }
    }

    /// The `reason` label of `kefu_refusals_total` (snake_case, stable; the webhook's names
    /// where the cause is the same).
    pub fn reason(&self) -> &'static str {
        match self {
            PayError::TooLarge { .. } => "too_large",
            PayError::NotUtf8 | PayError::Malformed(_) | PayError::Doctype => "malformed",
            PayError::Missing("sign") => "missing_signature",
            PayError::Missing(_) | PayError::Invalid { .. } => "bad_field",
            PayError::UnsupportedSignType(_) => "unsupported_sign_type",
            PayError::SignTypeMismatch(_) => "sign_type_mismatch",
            PayError::BadSignature(_) => "bad_signature",
            PayError::MissingHeader(_) => "missing_signature_header",
            PayError::Stale { .. } => "stale_timestamp",
            PayError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            PayError::Decrypt => "decrypt_failed",
        }
    }

    /// A short reason for the answer body. The log line gets the full `Display`.
    pub fn short(&self) -> &'static str {
        match self {
            PayError::TooLarge { .. } => "body too large",
            PayError::NotUtf8 | PayError::Malformed(_) | PayError::Doctype => "malformed body",
            PayError::Missing("sign") => "missing sign",
            PayError::Missing(_) | PayError::Invalid { .. } => "missing or invalid field",
            PayError::UnsupportedSignType(_) => "unsupported sign_type",
            PayError::BadSignature(_) => "invalid signature",
            PayError::SignTypeMismatch(_) => "sign type mismatch",
            PayError::MissingHeader(_) => "missing Wechatpay header",
            PayError::Stale { .. } => "timestamp out of range",
            PayError::UnsupportedAlgorithm(_) => "unsupported algorithm",
            PayError::Decrypt => "resource does not decrypt",
        }
    }
}

impl From<IdError> for PayError {
    fn from(e: IdError) -> Self {
        PayError::Invalid { field: "openid", why: e.to_string() }
    }
}

/// A transaction id is the dedupe key, so it must be a plain token: WeChat's are 28–32 digits;
/// accept 1..=64 ASCII graphic characters.
pub(crate) fn check_transaction_id(s: &str) -> Result<String, PayError> {
    if s.is_empty() {
        return Err(PayError::Missing("transaction_id"));
    }
    if s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(PayError::Invalid {
            field: "transaction_id",
            why: "expected 1 to 64 printable ASCII characters".into(),
        });
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn yuan_formatting() {
        for (fen, want) in
            [(0, "0.00"), (1, "0.01"), (10, "0.10"), (100, "1.00"), (12345, "123.45")]
        {
            assert_eq!(format_yuan(fen), want);
        }
    }

    #[test]
    fn rule_input_is_a_payment_event() {
        let r = payment().rule_input();
        assert_eq!(r.from, "oUser");
        assert_eq!(r.msg_type, "event");
        assert_eq!(r.event.as_deref(), Some("payment"));
        assert_eq!(r.text, None);
        let get = |k: &str| r.vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("amount"), Some("1"));
        assert_eq!(get("amount_yuan"), Some("0.01"));
        assert_eq!(get("out_trade_no"), Some("order-7"));
        assert_eq!(get("transaction_id"), Some("4200001"));
        assert_eq!(get("attach"), Some("a"));
    }

    #[test]
    fn pay_cell_payment() {
        let p = Payment::from_pay_cell("4200002", OpenId::parse("oU").unwrap(), 990, "1480000000")
            .unwrap();
        assert_eq!(p.source, PaymentSource::PayCell);
        assert_eq!(p.amount_yuan(), "9.90");
        assert_eq!(p.out_trade_no, "");
        assert!(Payment::from_pay_cell("", OpenId::parse("oU").unwrap(), 1, "").is_err());
        assert!(Payment::from_pay_cell("a b", OpenId::parse("oU").unwrap(), 1, "").is_err());
    }

    #[test]
    fn source_serializes_as_contract_names() {
        assert_eq!(serde_json::to_string(&PaymentSource::PayCell).unwrap(), "\"pay_cell\"");
        assert_eq!(PaymentSource::V3.as_str(), "v3");
    }
}
