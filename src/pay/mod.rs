//! WeChat Pay result notifications, verified without I/O: v2 (signed XML, protocol §3.5) in
//! [`v2`], v3 (RSA-signed JSON with an AES-256-GCM resource, protocol §3.6) in [`v3`], and the
//! typed [`Payment`] both produce. The HTTP side lives in `http::pay`; recording and
//! deduplicating by transaction id is the `PaymentSink`'s job.

pub mod v2;
pub mod v3;

use serde::{Deserialize, Serialize};

use crate::model::{IdError, OpenId};

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
    /// The amount in yuan with two decimals, `1` fen → `0.01`.
    pub fn amount_yuan(&self) -> String {
        format_yuan(self.amount_fen)
    }

    /// A stand-in for `kefu simulate --event payment`: paid by `openid`, amount 0, transaction
    /// id `SIMULATED`, the order number `out_trade_no` (the simulated event's key) or empty.
    pub fn simulated(openid: OpenId, out_trade_no: Option<&str>) -> Payment {
        Payment {
            transaction_id: "SIMULATED".into(),
            out_trade_no: out_trade_no.unwrap_or_default().to_string(),
            openid,
            appid: None,
            amount_fen: 0,
            currency: "CNY".into(),
            attach: None,
            paid_at: String::new(),
            source: PaymentSource::V2,
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
        self.names().0
    }

    /// A short reason for the answer body. The log line gets the full `Display`.
    pub fn short(&self) -> &'static str {
        self.names().1
    }

    /// (metric label, answer text): one table, so a new variant gets both.
    fn names(&self) -> (&'static str, &'static str) {
        match self {
            PayError::TooLarge { .. } => ("too_large", "body too large"),
            PayError::NotUtf8 | PayError::Malformed(_) | PayError::Doctype => {
                ("malformed", "malformed body")
            }
            PayError::Missing("sign") => ("missing_signature", "missing sign"),
            PayError::Missing(_) | PayError::Invalid { .. } => {
                ("bad_field", "missing or invalid field")
            }
            PayError::UnsupportedSignType(_) => ("unsupported_sign_type", "unsupported sign_type"),
            PayError::SignTypeMismatch(_) => ("sign_type_mismatch", "sign type mismatch"),
            PayError::BadSignature(_) => ("bad_signature", "invalid signature"),
            PayError::MissingHeader(_) => ("missing_signature_header", "missing Wechatpay header"),
            PayError::Stale { .. } => ("stale_timestamp", "timestamp out of range"),
            PayError::UnsupportedAlgorithm(_) => ("unsupported_algorithm", "unsupported algorithm"),
            PayError::Decrypt => ("decrypt_failed", "resource does not decrypt"),
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

    #[test]
    fn yuan_formatting() {
        for (fen, want) in
            [(0, "0.00"), (1, "0.01"), (10, "0.10"), (100, "1.00"), (12345, "123.45")]
        {
            assert_eq!(format_yuan(fen), want);
        }
    }

    #[test]
    fn source_serializes_as_contract_names() {
        assert_eq!(serde_json::to_string(&PaymentSource::PayCell).unwrap(), "\"pay_cell\"");
        assert_eq!(PaymentSource::V3.as_str(), "v3");
    }
}
