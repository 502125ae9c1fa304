//! WeChat Pay v2 result notifications (protocol §3.5): the XML body read as a generic
//! key→value map (WeChat adds fields over time and every one is signed), the MD5 /
//! HMAC-SHA256 sign (which one: `pay.v2_sign_type`, by default decided by the sign's length,
//! since HMAC-signed notifications may omit `sign_type`), and the XML answers.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use quick_xml::Reader;
use quick_xml::events::Event;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{MAX_NOTIFY_BYTES, Outcome, PayError, Payment, PaymentSource, check_transaction_id};
use crate::model::{OpenId, Secret};

/// The acknowledgement WeChat Pay expects; anything else makes it retry for about 24 h.
pub const SUCCESS_ANSWER: &str = "<xml><return_code><![CDATA[SUCCESS]]></return_code>\
<return_msg><![CDATA[OK]]></return_msg></xml>";

/// A refusal answer carrying `reason`.
pub fn fail_answer(reason: &str) -> String {
    format!(
        "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg>{}</return_msg></xml>",
        cdata(reason)
    )
}

/// Wraps `s` in CDATA, splitting any `]]>` so the section cannot be closed early.
fn cdata(s: &str) -> String {
    format!("<![CDATA[{}]]>", s.replace("]]>", "]]]]><![CDATA[>"))
}

/// The two sign algorithms of `sign_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignType {
    Md5,
    HmacSha256,
}

impl SignType {
    /// The notification's own `sign_type`; absent (or empty) means MD5.
    pub fn from_field(v: Option<&str>) -> Result<SignType, PayError> {
        match v {
            None | Some("") => Ok(SignType::Md5),
            Some(name) => SignType::from_name(name),
        }
    }

    /// `MD5` or `HMAC-SHA256`, as WeChat Pay spells them in `sign_type`.
    pub fn from_name(v: &str) -> Result<SignType, PayError> {
        match v {
            "MD5" => Ok(SignType::Md5),
            "HMAC-SHA256" => Ok(SignType::HmacSha256),
            other => Err(PayError::UnsupportedSignType(other.to_string())),
        }
    }

    /// The `sign_type` spelling: `MD5` or `HMAC-SHA256`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }

    /// The kind of sign a `sign` value looks like: 32 hex digits are an MD5 digest, 64 an
    /// HMAC-SHA256 one; anything else is neither.
    pub fn of_sign(sign: &str) -> Option<SignType> {
        if !sign.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        match sign.len() {
            32 => Some(SignType::Md5),
            64 => Some(SignType::HmacSha256),
            _ => None,
        }
    }
}

/// Which sign algorithm v2 notifications are checked with (`pay.v2_sign_type`).
///
/// WeChat Pay signs a notification with the algorithm the order was placed with, and an order
/// placed with HMAC-SHA256 may come back without a `sign_type` element, so the element alone
/// cannot decide (protocol §3.5 says "absent ⇒ MD5", which is wrong for those).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum V2SignType {
    /// `"auto"`: by the sign's length (32 hex digits MD5, 64 HMAC-SHA256); a `sign_type`
    /// element that says otherwise is refused.
    #[default]
    Auto,
    /// `"MD5"` or `"HMAC-SHA256"`: only this; a sign of the other kind, or a `sign_type` element
    /// naming the other algorithm, is refused.
    Fixed(SignType),
}

impl V2SignType {
    /// Parses the config value: `auto`, `MD5` or `HMAC-SHA256` (case-insensitive).
    pub fn parse(s: &str) -> Result<V2SignType, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "AUTO" => Ok(V2SignType::Auto),
            "MD5" => Ok(V2SignType::Fixed(SignType::Md5)),
            "HMAC-SHA256" => Ok(V2SignType::Fixed(SignType::HmacSha256)),
            _ => Err(format!(
                "{s:?} is not a v2 sign type: write \"auto\" (decide by the sign's length), \"MD5\" \
                 or \"HMAC-SHA256\""
            )),
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            V2SignType::Auto => "auto",
            V2SignType::Fixed(t) => t.as_str(),
        }
    }
}

/// Reads a v2 body `<xml><k>v</k>...</xml>` into a map. Values may be CDATA or escaped text;
/// the five predefined entities and character references are resolved, any other entity and any
/// DOCTYPE is refused, nested elements and repeated fields are refused (a repeated field would
/// make "which one was signed" ambiguous).
pub fn parse_fields(body: &[u8]) -> Result<BTreeMap<String, String>, PayError> {
    if body.len() > MAX_NOTIFY_BYTES {
        return Err(PayError::TooLarge { len: body.len(), max: MAX_NOTIFY_BYTES });
    }
    let text = std::str::from_utf8(body).map_err(|_| PayError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    let malformed = |e: &dyn std::fmt::Display| PayError::Malformed(e.to_string());

    let mut fields = BTreeMap::new();
    // 0 = outside the root, 1 = inside <xml>, 2 = inside a field.
    let mut depth = 0u8;
    let mut seen_root = false;
    let mut name = String::new();
    let mut value = String::new();
    loop {
        let ev = reader.read_event().map_err(|e| malformed(&e))?;
        match ev {
            Event::DocType(_) => return Err(PayError::Doctype),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Start(ref e) | Event::Empty(ref e) if depth == 0 => {
                if seen_root {
                    return Err(PayError::Malformed("more than one root element".into()));
                }
                if e.name().as_ref() != b"xml" {
                    return Err(PayError::Malformed("the root element is not <xml>".into()));
                }
                seen_root = true;
                if matches!(ev, Event::Start(_)) {
                    depth = 1;
                }
            }
            Event::Start(e) if depth == 1 => {
                name = element_name(e.name().as_ref())?;
                value.clear();
                depth = 2;
            }
            Event::Empty(e) if depth == 1 => {
                insert(&mut fields, element_name(e.name().as_ref())?, String::new())?;
            }
            Event::Start(_) | Event::Empty(_) => {
                return Err(PayError::Malformed(format!("field <{name}> has child elements")));
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| malformed(&e))?;
                if depth == 2 {
                    value.push_str(&s);
                } else if !s.trim().is_empty() {
                    return Err(PayError::Malformed("text outside a field".into()));
                }
            }
            Event::CData(t) => {
                if depth != 2 {
                    return Err(PayError::Malformed("CDATA outside a field".into()));
                }
                value.push_str(&t.decode().map_err(|e| malformed(&e))?);
            }
            Event::GeneralRef(r) => {
                if depth != 2 {
                    return Err(PayError::Malformed("entity reference outside a field".into()));
                }
                if let Some(c) = r.resolve_char_ref().map_err(|e| malformed(&e))? {
                    value.push(c);
                } else {
                    let ent = r.decode().map_err(|e| malformed(&e))?;
                    match quick_xml::escape::resolve_predefined_entity(&ent) {
                        Some(s) => value.push_str(s),
                        None => return Err(PayError::Doctype),
                    }
                }
            }
            Event::End(_) => match depth {
                2 => {
                    insert(&mut fields, std::mem::take(&mut name), std::mem::take(&mut value))?;
                    depth = 1;
                }
                1 => depth = 0,
                _ => return Err(PayError::Malformed("unbalanced end tag".into())),
            },
            Event::Eof => {
                if !seen_root || depth != 0 {
                    return Err(PayError::Malformed("the document ends before </xml>".into()));
                }
                return Ok(fields);
            }
        }
    }
}

fn element_name(raw: &[u8]) -> Result<String, PayError> {
    std::str::from_utf8(raw).map(str::to_string).map_err(|_| PayError::NotUtf8)
}

fn insert(map: &mut BTreeMap<String, String>, k: String, v: String) -> Result<(), PayError> {
    if map.contains_key(&k) {
        return Err(PayError::Malformed(format!("field <{k}> appears twice")));
    }
    map.insert(k, v);
    Ok(())
}

/// The string that is signed: every non-empty field except `sign`, in ASCII key order,
/// `k=v` joined by `&`, then `&key=<API key>`. It contains the key: never log it.
fn string_to_sign(fields: &BTreeMap<String, String>, api_key: &Secret) -> String {
    let mut s = String::with_capacity(512);
    // BTreeMap<String, _> iterates in byte order, which is the ASCII order WeChat specifies.
    for (k, v) in fields.iter().filter(|(k, v)| k.as_str() != "sign" && !v.is_empty()) {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('&');
    }
    s.push_str("key=");
    s.push_str(api_key.expose());
    s
}

/// The v2 sign of `fields` (uppercase hex).
pub fn sign(fields: &BTreeMap<String, String>, api_key: &Secret, sign_type: SignType) -> String {
    let s = string_to_sign(fields, api_key);
    match sign_type {
        SignType::Md5 => hex::encode_upper(Md5::digest(s.as_bytes())),
        SignType::HmacSha256 => {
            // HMAC accepts a key of any length, so this cannot fail.
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(api_key.expose().as_bytes())
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
            mac.update(s.as_bytes());
            hex::encode_upper(mac.finalize().into_bytes())
        }
    }
}

/// Which algorithm to check `fields` with under `setting`, before any key is used: the
/// configured one, or in `auto` the one the sign's length shows. A `sign_type` element that
/// contradicts that choice, or a sign of the wrong kind for a fixed setting, is refused with
/// [`PayError::SignTypeMismatch`] naming both sides.
pub fn choose_sign_type(
    fields: &BTreeMap<String, String>,
    setting: V2SignType,
) -> Result<SignType, PayError> {
    let got = fields.get("sign").filter(|s| !s.is_empty()).ok_or(PayError::Missing("sign"))?;
    let declared = match fields.get("sign_type").map(String::as_str) {
        None | Some("") => None,
        Some(name) => Some(SignType::from_name(name)?),
    };
    let shape = SignType::of_sign(got);
    let mismatch = |why: String| Err(PayError::SignTypeMismatch(why));
    let chosen = match setting {
        V2SignType::Auto => match shape {
            Some(t) => t,
            None => {
                return mismatch(format!(
                    "the sign has {} characters; expected 32 (MD5) or 64 (HMAC-SHA256) hex digits",
                    got.chars().count()
                ));
            }
        },
        V2SignType::Fixed(t) => {
            if let Some(s) = shape.filter(|s| *s != t) {
                return mismatch(format!(
                    "the sign is {} ({} hex digits) but pay.v2_sign_type is \"{}\": set \
                     pay.v2_sign_type to \"{}\" or \"auto\" if your orders are signed with {}",
                    s.as_str(),
                    got.len(),
                    t.as_str(),
                    s.as_str(),
                    s.as_str()
                ));
            }
            t
        }
    };
    if let Some(d) = declared.filter(|d| *d != chosen) {
        let by = match setting {
            V2SignType::Auto => format!("the sign's length ({} hex digits)", got.len()),
            V2SignType::Fixed(_) => "pay.v2_sign_type".to_string(),
        };
        return mismatch(format!(
            "sign_type {} contradicts {by}, which says {}",
            d.as_str(),
            chosen.as_str()
        ));
    }
    Ok(chosen)
}

/// Checks `sign` with the algorithm [`choose_sign_type`] picks, in constant time, and returns
/// that algorithm.
pub fn verify_sign(
    fields: &BTreeMap<String, String>,
    api_key: &Secret,
    setting: V2SignType,
) -> Result<SignType, PayError> {
    let sign_type = choose_sign_type(fields, setting)?;
    let got = fields.get("sign").map(String::as_str).unwrap_or("");
    let want = sign(fields, api_key, sign_type);
    if bool::from(got.to_ascii_uppercase().as_bytes().ct_eq(want.as_bytes())) {
        Ok(sign_type)
    } else {
        Err(PayError::BadSignature("pay.v2_api_key"))
    }
}

/// Verifies v2 notifications with the merchant's API key.
#[derive(Debug, Clone)]
pub struct V2Verifier {
    api_key: Secret,
    sign_type: V2SignType,
}

impl V2Verifier {
    /// A verifier that decides the algorithm by the sign's length ([`V2SignType::Auto`]).
    pub fn new(api_key: Secret) -> Self {
        V2Verifier { api_key, sign_type: V2SignType::Auto }
    }

    /// Checks with `setting` (`pay.v2_sign_type`) instead.
    pub fn with_sign_type(mut self, setting: V2SignType) -> Self {
        self.sign_type = setting;
        self
    }

    /// Parses and verifies one notification. A notification without a valid sign is refused
    /// whatever it says; a signed one that is not a success is [`Outcome::NotPaid`].
    pub fn verify(&self, body: &[u8]) -> Result<Outcome, PayError> {
        self.verify_with_sign_type(body).map(|(o, _)| o)
    }

    /// [`Self::verify`], also returning the algorithm the sign matched with (for the log).
    pub fn verify_with_sign_type(&self, body: &[u8]) -> Result<(Outcome, SignType), PayError> {
        let fields = parse_fields(body)?;
        let sign_type = verify_sign(&fields, &self.api_key, self.sign_type)?;
        outcome(&fields).map(|o| (o, sign_type))
    }
}

/// What a verified notification says.
fn outcome(fields: &BTreeMap<String, String>) -> Result<Outcome, PayError> {
    let get = |k: &str| fields.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let tx = get("transaction_id").map(str::to_string);
    if get("return_code") != Some("SUCCESS") {
        let reason = format!(
            "return_code {} ({})",
            get("return_code").unwrap_or("absent"),
            get("return_msg").unwrap_or("")
        );
        return Ok(Outcome::NotPaid { transaction_id: tx, reason });
    }
    if get("result_code") != Some("SUCCESS") {
        let reason = format!(
            "result_code {} ({} {})",
            get("result_code").unwrap_or("absent"),
            get("err_code").unwrap_or(""),
            get("err_code_des").unwrap_or("")
        );
        return Ok(Outcome::NotPaid { transaction_id: tx, reason });
    }
    let total = get("total_fee").ok_or(PayError::Missing("total_fee"))?;
    let amount_fen = total.parse::<u64>().map_err(|_| PayError::Invalid {
        field: "total_fee",
        why: format!("{total:?} is not a whole number of fen"),
    })?;
    Ok(Outcome::Paid(Payment {
        transaction_id: check_transaction_id(get("transaction_id").unwrap_or(""))?,
        out_trade_no: get("out_trade_no").ok_or(PayError::Missing("out_trade_no"))?.into(),
        openid: OpenId::parse(get("openid").ok_or(PayError::Missing("openid"))?)?,
        appid: get("appid").map(str::to_string),
        amount_fen,
        currency: get("fee_type").unwrap_or("CNY").to_string(),
        attach: get("attach").map(str::to_string),
        paid_at: get("time_end").unwrap_or("").to_string(),
        source: PaymentSource::V2,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pay::Refusal;

    const KEY: &str = "192006250b4c09247ec02edce69f6a2d";
    const N1: &str = include_str!("../../tests/fixtures/pay/n1.xml");
    const N1_HMAC: &str = include_str!("../../tests/fixtures/pay/n1_hmac_sha256.xml");

    fn key() -> Secret {
        Secret::new(KEY)
    }

    fn official_params() -> BTreeMap<String, String> {
        [
            ("appid", "wxd930ea5d5a258f4f"),
            ("mch_id", "10000100"),
            ("device_info", "1000"),
            ("body", "test"),
            ("nonce_str", "ibuaiVcKdpRxkhJA"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn official_sign_vectors() {
        let p = official_params();
        assert_eq!(
            string_to_sign(&p, &key()),
            "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100\
             &nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d"
        );
        assert_eq!(sign(&p, &key(), SignType::Md5), "9A0A8659F005D6984697E2CA0A9CF3B7");
        assert_eq!(
            sign(&p, &key(), SignType::HmacSha256),
            "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
        );
    }

    #[test]
    fn sign_skips_empty_values_and_sign_itself() {
        let mut p = official_params();
        p.insert("sign".into(), "WHATEVER".into());
        p.insert("zzz_empty".into(), String::new());
        assert_eq!(sign(&p, &key(), SignType::Md5), "9A0A8659F005D6984697E2CA0A9CF3B7");
    }

    #[test]
    fn fixture_n1_md5_and_hmac() {
        let f = parse_fields(N1.as_bytes()).unwrap();
        assert_eq!(f.len(), 17);
        assert_eq!(f["sign"], "A5789456EABB5C3DFEF0D9CD601CA6E5");
        assert_eq!(sign(&f, &key(), SignType::Md5), "A5789456EABB5C3DFEF0D9CD601CA6E5");
        let h = parse_fields(N1_HMAC.as_bytes()).unwrap();
        assert_eq!(h["sign_type"], "HMAC-SHA256");
        assert_eq!(
            sign(&h, &key(), SignType::HmacSha256),
            "04F8C372E9FCB38CD5BA2C153628B57E40014B82CAE396A73B6E98EFFD1F53D8"
        );
        for body in [N1, N1_HMAC] {
            let Outcome::Paid(p) = V2Verifier::new(key()).verify(body.as_bytes()).unwrap() else {
                panic!("N1 is a success")
            };
            assert_eq!(
                p,
                Payment {
                    transaction_id: "1004400740201409030005092168".into(),
                    out_trade_no: "1409811653".into(),
                    openid: OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap(),
                    appid: Some("wxd930ea5d5a258f4f".into()),
                    amount_fen: 1,
                    currency: "CNY".into(),
                    attach: Some("order-42".into()),
                    paid_at: "20140903131540".into(),
                    source: PaymentSource::V2,
                }
            );
        }
    }

    #[test]
    fn tampering_is_refused() {
        let v = V2Verifier::new(key());
        let cases: &[(&str, String)] = &[
            (
                "changed amount",
                N1.replace("<total_fee>1</total_fee>", "<total_fee>100</total_fee>"),
            ),
            ("changed payer", N1.replace("oUpF8uMEb4qRXf22hE3X68TekukE", "oAttacker")),
            ("added field", N1.replace("</xml>", "<coupon_fee>1</coupon_fee></xml>")),
            (
                "sign dropped",
                N1.replace("<sign><![CDATA[A5789456EABB5C3DFEF0D9CD601CA6E5]]></sign>", ""),
            ),
            (
                "md5 sign relabelled as hmac",
                N1.replace("<xml>", "<xml><sign_type>HMAC-SHA256</sign_type>"),
            ),
            ("hmac downgraded to md5", N1_HMAC.replace("HMAC-SHA256", "MD5")),
        ];
        for (what, body) in cases {
            let e = v.verify(body.as_bytes()).unwrap_err();
            assert!(
                matches!(
                    e,
                    PayError::BadSignature(_)
                        | PayError::SignTypeMismatch(_)
                        | PayError::Missing("sign")
                ),
                "{what}: {e:?}"
            );
            assert_eq!(e.refusal(), Refusal::Unauthenticated, "{what}");
        }
        let wrong = V2Verifier::new(Secret::new("00000000000000000000000000000000"));
        assert_eq!(
            wrong.verify(N1.as_bytes()).unwrap_err(),
            PayError::BadSignature("pay.v2_api_key")
        );
        assert_eq!(
            wrong.verify(N1_HMAC.as_bytes()).unwrap_err(),
            PayError::BadSignature("pay.v2_api_key")
        );
    }

    #[test]
    fn lowercase_sign_is_accepted() {
        let body =
            N1.replace("A5789456EABB5C3DFEF0D9CD601CA6E5", "a5789456eabb5c3dfef0d9cd601ca6e5");
        assert!(matches!(V2Verifier::new(key()).verify(body.as_bytes()), Ok(Outcome::Paid(_))));
    }

    /// Builds a signed body from fields, for outcomes N1 does not cover.
    fn signed(fields: &[(&str, &str)], st: SignType) -> String {
        let mut m: BTreeMap<String, String> =
            fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let s = sign(&m, &key(), st);
        m.insert("sign".into(), s);
        let mut x = String::from("<xml>");
        for (k, v) in &m {
            x.push_str(&format!("<{k}>{}</{k}>", cdata(v)));
        }
        x.push_str("</xml>");
        x
    }

    #[test]
    fn signed_failures_are_not_payments() {
        let v = V2Verifier::new(key());
        let body = signed(
            &[
                ("return_code", "SUCCESS"),
                ("result_code", "FAIL"),
                ("err_code", "SYSTEMERROR"),
                ("transaction_id", "42"),
            ],
            SignType::Md5,
        );
        assert_eq!(
            v.verify(body.as_bytes()).unwrap(),
            Outcome::NotPaid {
                transaction_id: Some("42".into()),
                reason: "result_code FAIL (SYSTEMERROR )".into()
            }
        );
        let body = signed(
            &[("return_code", "FAIL"), ("return_msg", "x"), ("sign_type", "HMAC-SHA256")],
            SignType::HmacSha256,
        );
        assert!(matches!(v.verify(body.as_bytes()), Ok(Outcome::NotPaid { .. })));
        // An unsigned FAIL is still refused: nothing unauthenticated is believed.
        let unsigned = "<xml><return_code>FAIL</return_code></xml>";
        assert_eq!(v.verify(unsigned.as_bytes()).unwrap_err(), PayError::Missing("sign"));
    }

    #[test]
    fn signed_success_with_bad_fields_is_refused() {
        let v = V2Verifier::new(key());
        let base = [("return_code", "SUCCESS"), ("result_code", "SUCCESS")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut f = base.to_vec();
            f.extend_from_slice(extra);
            signed(&f, SignType::Md5)
        };
        let full = [
            ("transaction_id", "42"),
            ("out_trade_no", "o1"),
            ("openid", "oU"),
            ("total_fee", "1"),
        ];
        assert!(matches!(v.verify(with(&full).as_bytes()), Ok(Outcome::Paid(_))));
        let e = v.verify(with(&full[..3]).as_bytes()).unwrap_err();
        assert_eq!(e, PayError::Missing("total_fee"));
        let e = v
            .verify(with(&[full[0], full[1], full[2], ("total_fee", "-1")]).as_bytes())
            .unwrap_err();
        assert!(matches!(e, PayError::Invalid { field: "total_fee", .. }), "{e:?}");
        let e = v
            .verify(with(&[full[0], full[1], ("openid", "o/../x"), full[3]]).as_bytes())
            .unwrap_err();
        assert!(matches!(e, PayError::Invalid { field: "openid", .. }), "{e:?}");
        let e = v.verify(with(&full[1..]).as_bytes()).unwrap_err();
        assert_eq!(e, PayError::Missing("transaction_id"));
    }

    #[test]
    fn xml_values_bare_cdata_and_escapes() {
        let f = parse_fields(
            b"<?xml version=\"1.0\"?><xml><a>1</a><b><![CDATA[x&y<z>]]></b>\
              <c>p&amp;q&#x4e2d;</c><d/><!-- c --></xml>",
        )
        .unwrap();
        let got: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, [("a", "1"), ("b", "x&y<z>"), ("c", "p&q中"), ("d", "")]);
    }

    #[test]
    fn hostile_or_broken_xml_is_refused() {
        let cases: &[(&str, &[u8])] = &[
            ("doctype", b"<!DOCTYPE x [<!ENTITY e \"boom\">]><xml><a>&e;</a></xml>"),
            ("undeclared entity", b"<xml><a>&e;</a></xml>"),
            ("nested", b"<xml><a><b>1</b></a></xml>"),
            ("duplicate", b"<xml><a>1</a><a>2</a></xml>"),
            ("truncated", b"<xml><a>1</a>"),
            ("wrong root", b"<root><a>1</a></root>"),
            ("two roots", b"<xml></xml><xml></xml>"),
            ("text in root", b"<xml>junk<a>1</a></xml>"),
            ("mismatched", b"<xml><a>1</b></xml>"),
            ("empty", b""),
            ("not utf-8", b"<xml><a>\xff</a></xml>"),
        ];
        for (what, body) in cases {
            let e = parse_fields(body).unwrap_err();
            assert!(
                matches!(e, PayError::Doctype | PayError::Malformed(_) | PayError::NotUtf8),
                "{what}: {e:?}"
            );
        }
        assert!(matches!(parse_fields(b"<!DOCTYPE x><xml/>"), Err(PayError::Doctype)));
        let big = vec![b' '; MAX_NOTIFY_BYTES + 1];
        assert!(matches!(parse_fields(&big), Err(PayError::TooLarge { .. })));
    }

    #[test]
    fn answers() {
        assert_eq!(
            SUCCESS_ANSWER,
            "<xml><return_code><![CDATA[SUCCESS]]></return_code>\
             <return_msg><![CDATA[OK]]></return_msg></xml>"
        );
        assert_eq!(
            fail_answer("invalid signature"),
            "<xml><return_code><![CDATA[FAIL]]></return_code>\
             <return_msg><![CDATA[invalid signature]]></return_msg></xml>"
        );
        let f = parse_fields(fail_answer("a]]>b").as_bytes()).unwrap();
        assert_eq!(f["return_msg"], "a]]>b");
    }

    /// N1's fields signed with HMAC-SHA256 and no `sign_type` element, as WeChat Pay sends
    /// notifications of orders placed with HMAC-SHA256.
    fn n1_hmac_without_sign_type(key: &Secret) -> String {
        let mut f = parse_fields(N1.as_bytes()).unwrap();
        f.remove("sign");
        let s = sign(&f, key, SignType::HmacSha256);
        f.insert("sign".into(), s);
        let mut x = String::from("<xml>");
        for (k, v) in &f {
            x.push_str(&format!("<{k}>{}</{k}>", cdata(v)));
        }
        x + "</xml>"
    }

    #[test]
    fn hmac_without_sign_type_verifies_by_the_signs_length() {
        let body = n1_hmac_without_sign_type(&key());
        assert!(!body.contains("sign_type"));
        let (o, st) = V2Verifier::new(key()).verify_with_sign_type(body.as_bytes()).unwrap();
        assert_eq!(st, SignType::HmacSha256);
        assert!(matches!(o, Outcome::Paid(_)), "{o:?}");
        // MD5 (no sign_type) and HMAC with sign_type still verify, each by its own algorithm.
        let v = V2Verifier::new(key());
        assert_eq!(v.verify_with_sign_type(N1.as_bytes()).unwrap().1, SignType::Md5);
        assert_eq!(v.verify_with_sign_type(N1_HMAC.as_bytes()).unwrap().1, SignType::HmacSha256);
        // Fixed to HMAC-SHA256, the same body verifies too.
        let fixed = V2Verifier::new(key()).with_sign_type(V2SignType::Fixed(SignType::HmacSha256));
        assert!(matches!(fixed.verify(body.as_bytes()), Ok(Outcome::Paid(_))));
        // Signed with another key: refused whatever the algorithm.
        let other = n1_hmac_without_sign_type(&Secret::new("ffffffffffffffffffffffffffffffff"));
        assert_eq!(
            v.verify(other.as_bytes()).unwrap_err(),
            PayError::BadSignature("pay.v2_api_key")
        );
    }

    #[test]
    fn a_fixed_sign_type_refuses_the_other_kind_clearly() {
        let md5 = V2Verifier::new(key()).with_sign_type(V2SignType::Fixed(SignType::Md5));
        let hmac = V2Verifier::new(key()).with_sign_type(V2SignType::Fixed(SignType::HmacSha256));
        assert!(matches!(md5.verify(N1.as_bytes()), Ok(Outcome::Paid(_))));
        assert!(matches!(hmac.verify(N1_HMAC.as_bytes()), Ok(Outcome::Paid(_))));

        let e = md5.verify(n1_hmac_without_sign_type(&key()).as_bytes()).unwrap_err();
        let PayError::SignTypeMismatch(why) = &e else { panic!("{e:?}") };
        assert!(
            why.contains("HMAC-SHA256 (64 hex digits)") && why.contains("pay.v2_sign_type"),
            "{why}"
        );
        assert_eq!(e.refusal(), Refusal::Unauthenticated);
        assert_eq!(e.short(), "sign type mismatch");

        // A 64-digit sign under sign_type HMAC-SHA256, with MD5 configured: the sign's kind
        // is what is refused first.
        let e = md5.verify(N1_HMAC.as_bytes()).unwrap_err();
        assert!(matches!(e, PayError::SignTypeMismatch(_)), "{e:?}");
        // An MD5 sign under a sign_type that says HMAC-SHA256 contradicts the MD5 setting.
        let relabelled = N1.replace("<xml>", "<xml><sign_type>HMAC-SHA256</sign_type>");
        let e = md5.verify(relabelled.as_bytes()).unwrap_err();
        let PayError::SignTypeMismatch(why) = &e else { panic!("{e:?}") };
        assert!(why.contains("sign_type HMAC-SHA256 contradicts pay.v2_sign_type"), "{why}");
        // HMAC configured, MD5 sign.
        let e = hmac.verify(N1.as_bytes()).unwrap_err();
        let PayError::SignTypeMismatch(why) = &e else { panic!("{e:?}") };
        assert!(why.contains("the sign is MD5 (32 hex digits)"), "{why}");
        // In auto, a sign_type that contradicts the sign's length is refused too.
        let e = V2Verifier::new(key()).verify(relabelled.as_bytes()).unwrap_err();
        let PayError::SignTypeMismatch(why) = &e else { panic!("{e:?}") };
        assert!(why.contains("contradicts the sign's length (32 hex digits)"), "{why}");
        // A sign that is neither kind.
        let odd = N1.replace("A5789456EABB5C3DFEF0D9CD601CA6E5", "A5789456");
        let e = V2Verifier::new(key()).verify(odd.as_bytes()).unwrap_err();
        assert!(matches!(e, PayError::SignTypeMismatch(_)), "{e:?}");
        assert!(!e.to_string().contains(KEY));
    }

    #[test]
    fn v2_sign_type_config_values() {
        assert_eq!(V2SignType::parse("auto").unwrap(), V2SignType::Auto);
        assert_eq!(V2SignType::parse("MD5").unwrap(), V2SignType::Fixed(SignType::Md5));
        assert_eq!(
            V2SignType::parse("hmac-sha256").unwrap(),
            V2SignType::Fixed(SignType::HmacSha256)
        );
        assert!(V2SignType::parse("SHA256").unwrap_err().contains("\"auto\""));
        assert_eq!(V2SignType::default(), V2SignType::Auto);
    }

    #[test]
    fn sign_type_parsing() {
        assert_eq!(SignType::from_field(None).unwrap(), SignType::Md5);
        assert_eq!(SignType::from_field(Some("MD5")).unwrap(), SignType::Md5);
        assert_eq!(SignType::from_field(Some("HMAC-SHA256")).unwrap(), SignType::HmacSha256);
        assert!(SignType::from_field(Some("SHA1")).is_err());
    }
}
