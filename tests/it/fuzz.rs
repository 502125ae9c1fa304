//! Fuzzing the untrusted-input paths (decode, decrypt, the whole `open` step) with proptest:
//! fixture mutations, token soup from an XML/WeChat dictionary, random bytes, random base64 and
//! arbitrary decrypted plaintexts. Nothing may panic; everything is a value or an error.
//!
//! `cargo test --test it fuzz` runs a few hundred cases per target (`KEFU_FUZZ_CASES` raises
//! it). The long run is time-bounded and counts executions:
//! `KEFU_FUZZ_SECS=300 cargo test --test it fuzz_for_a_while -- --ignored --nocapture`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use aes::Aes256;
use base64::Engine;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use kefu::model::Secret;
use kefu::wechat::inbound;
use kefu::wechat::signature;
use kefu::wechat::webhook::{self, Keys, Query};

use crate::helpers::*;

const DICT: &[&str] = &[
    "<xml>",
    "</xml>",
    "<xml/>",
    "<ToUserName>",
    "</ToUserName>",
    "<FromUserName>",
    "</FromUserName>",
    "<CreateTime>",
    "</CreateTime>",
    "<MsgType>",
    "</MsgType>",
    "<Event>",
    "</Event>",
    "<EventKey>",
    "</EventKey>",
    "<MsgId>",
    "</MsgId>",
    "<Content>",
    "</Content>",
    "<Encrypt>",
    "</Encrypt>",
    "<SendPicsInfo>",
    "<PicList>",
    "<item>",
    "</item>",
    "<Fee>",
    "<ScanCodeInfo>",
    "<![CDATA[",
    "]]>",
    "text",
    "event",
    "subscribe",
    "SCAN",
    "CLICK",
    "scancode_push",
    "pic_weixin",
    "location_select",
    "user_pay_from_pay_cell",
    "MASSSENDJOBFINISH",
    "kf_switch_session",
    "qrscene_",
    "last_trade_no_",
    "1700000001",
    "-1",
    "18446744073709551616",
    "9223372036854775807",
    "1e309",
    "NaN",
    "&amp;",
    "&lt;",
    "&#0;",
    "&#x110000;",
    "&#65;",
    "&e;",
    "&",
    "<!DOCTYPE x>",
    "<!ENTITY e \"x\">",
    "<?xml version=\"1.0\"?>",
    "<!-- c -->",
    "<?pi x?>",
    " ",
    "\n",
    "\u{0}",
    "你好",
    "\u{feff}",
    "<",
    ">",
    "/",
    "\"",
    "'",
    "=",
    "<a b=\"c\">",
    "</a>",
];

fn fixtures() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wechat/pushes");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    v.sort();
    v
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, usize),
    Delete(usize, usize),
    Truncate(usize),
    Dup(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (any::<usize>(), 0..DICT.len()).prop_map(|(p, t)| Mutation::Insert(p, t)),
        (any::<usize>(), 1usize..40).prop_map(|(p, n)| Mutation::Delete(p, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..60).prop_map(|(p, n)| Mutation::Dup(p, n)),
    ]
}

fn apply(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = b.len().max(1);
        match *m {
            Mutation::Flip(p, x) => {
                if !b.is_empty() {
                    b[p % len] ^= x;
                }
            }
            Mutation::Insert(p, t) => {
                let at = p % (b.len() + 1);
                b.splice(at..at, DICT[t].bytes());
            }
            Mutation::Delete(p, n) => {
                let at = p % len;
                let end = (at + n).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
            Mutation::Truncate(p) => b.truncate(p % len),
            Mutation::Dup(p, n) => {
                let at = p % len;
                let end = (at + n).min(b.len());
                if at < end {
                    let piece = b[at..end].to_vec();
                    b.splice(at..at, piece);
                }
            }
        }
    }
    b
}

/// Mutated fixtures (the interesting region: almost-valid pushes).
fn mutated_fixture() -> impl Strategy<Value = Vec<u8>> {
    let fx = fixtures();
    (0..fx.len(), prop::collection::vec(mutation(), 0..8))
        .prop_map(move |(i, muts)| apply(fx[i].clone().into_bytes(), &muts))
}

/// Token soup from the dictionary, wrapped in `<xml>` half the time.
fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(0..DICT.len(), 0..60), any::<bool>()).prop_map(|(toks, wrap)| {
        let inner: String = toks.iter().map(|&t| DICT[t]).collect();
        if wrap { format!("<xml>{inner}</xml>").into_bytes() } else { inner.into_bytes() }
    })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => mutated_fixture(),
        3 => token_soup(),
        1 => prop::collection::vec(any::<u8>(), 0..600),
    ]
}

fn base64ish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9+/=]{0,300}",
        prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        // Whole blocks: past base64 and length, into the padding and layout checks.
        prop::collection::vec(any::<[u8; 16]>(), 1..20).prop_map(|blocks| {
            base64::engine::general_purpose::STANDARD.encode(blocks.concat())
        }),
    ]
}

/// Arbitrary *decrypted* plaintexts (whole blocks), encrypted with K1 so `decrypt` sees them:
/// every padding value, every length field.
fn crafted_plaintext() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(any::<u8>(), 0..200), any::<u32>(), 0u8..=40, any::<bool>()).prop_map(
        |(mut body, len, pad, set_len)| {
            while body.len() < 20 {
                body.push(b'r');
            }
            if set_len {
                body[16..20].copy_from_slice(&(len % 300).to_be_bytes());
            }
            let total = (body.len() + pad as usize).div_ceil(16).max(1) * 16;
            body.resize(total, pad);
            body
        },
    )
}

fn encrypt_raw(plain: &[u8]) -> String {
    let key = *k1().as_bytes();
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&key[..16]);
    let mut buf = plain.to_vec();
    let n = buf.len();
    let c = cbc::Encryptor::<Aes256>::new(&key.into(), &iv.into())
        .encrypt_padded_mut::<NoPadding>(&mut buf, n)
        .expect("whole blocks")
        .to_vec();
    base64::engine::general_purpose::STANDARD.encode(c)
}

fn keys() -> Keys {
    Keys {
        token: Secret::new(TOKEN),
        current: Some(k1()),
        previous: Some(
            kefu::wechat::crypto::AesKey::from_encoding_aes_key(
                "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
            )
            .unwrap(),
        ),
        app_id: APP_ID.into(),
        require_encryption: false,
        max_clock_skew_secs: 300,
    }
}

/// One whole `open` call: a body (plain, or wrapped in a valid encrypted envelope so decryption
/// and the inner decode are reached), a correctly signed query, sometimes mangled.
fn open_case() -> impl Strategy<Value = (Vec<u8>, bool, Option<String>, i64)> {
    (any_body(), any::<bool>(), prop::option::of("[a-z]{0,5}"), -1000i64..1000)
}

fn run_open(keys: &Keys, body: &[u8], encrypted: bool, enc_type: Option<String>, skew: i64) {
    let ts = 1_700_000_000i64;
    let tss = ts.to_string();
    let mut q = Query {
        signature: Some(signature::sign(&[TOKEN, &tss, "n"])),
        timestamp: Some(tss.clone()),
        nonce: Some("n".into()),
        ..Query::default()
    };
    let body = if encrypted {
        let text = String::from_utf8_lossy(body);
        let enc = k1().encrypt(&text, APP_ID);
        q.encrypt_type = Some("aes".into());
        q.msg_signature = Some(signature::sign(&[TOKEN, &tss, "n", &enc]));
        format!("<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>").into_bytes()
    } else {
        q.encrypt_type = enc_type;
        body.to_vec()
    };
    match webhook::open(keys, &q, &body, ts + skew) {
        Ok(o) => {
            assert!(!o.push.from.is_empty() && !o.push.to.is_empty());
            let _ = webhook::seal(keys, &o, "<xml/>");
        }
        Err(e) => assert!(matches!(e.status(), 400 | 401 | 403), "{e:?}"),
    }
}

fn check_parse(b: &[u8]) {
    if let Ok(p) = inbound::parse(b) {
        // Everything derived from a decoded push is total too.
        assert!(!p.msg_type.is_empty());
        let _ = (
            p.dedupe_key(),
            kefu::pipeline::intake::window_effect(&p),
            kefu::rules::input::of_push(&p),
            p.is_user_message(),
        );
    }
}

fn check_decrypt(s: &str) {
    let _ = k1().decrypt(s);
}

fn check_crafted(plain: &[u8]) {
    let _ = k1().decrypt(&encrypt_raw(plain));
}

fn cases() -> u32 {
    std::env::var("KEFU_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_decode_never_panics(body in any_body()) {
        check_parse(&body);
    }

    #[test]
    fn fuzz_decrypt_never_panics(s in base64ish()) {
        check_decrypt(&s);
    }

    #[test]
    fn fuzz_decrypt_any_plaintext(plain in crafted_plaintext()) {
        check_crafted(&plain);
    }

    #[test]
    fn fuzz_encrypt_decrypt_round_trip(xml in "\\PC{0,300}", appid in "[a-z0-9]{0,20}") {
        let enc = k1().encrypt(&xml, &appid);
        prop_assert_eq!(k1().decrypt(&enc).unwrap(), (xml, appid));
    }

    #[test]
    fn fuzz_open_never_panics((body, encrypted, enc_type, skew) in open_case()) {
        run_open(&keys(), &body, encrypted, enc_type, skew);
    }
}

/// The long, time-bounded run: every target in turn until `KEFU_FUZZ_SECS` pass; prints the
/// execution count. A panic prints the input that caused it.
#[test]
#[ignore = "long run: KEFU_FUZZ_SECS=300 cargo test --test it fuzz_for_a_while -- --ignored --nocapture"]
fn fuzz_for_a_while() {
    let secs: u64 = std::env::var("KEFU_FUZZ_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut runner = TestRunner::deterministic();
    let (bodies, b64, crafted, opens) = (any_body(), base64ish(), crafted_plaintext(), open_case());
    let keys = keys();
    let mut counts = [0u64; 4];
    while std::time::Instant::now() < deadline {
        for _ in 0..200 {
            let body = bodies.new_tree(&mut runner).unwrap().current();
            let r = catch_unwind(AssertUnwindSafe(|| check_parse(&body)));
            assert!(r.is_ok(), "parse panicked on {:?}", String::from_utf8_lossy(&body));
            counts[0] += 1;

            let s = b64.new_tree(&mut runner).unwrap().current();
            let r = catch_unwind(AssertUnwindSafe(|| check_decrypt(&s)));
            assert!(r.is_ok(), "decrypt panicked on {s:?}");
            counts[1] += 1;

            let p = crafted.new_tree(&mut runner).unwrap().current();
            let r = catch_unwind(AssertUnwindSafe(|| check_crafted(&p)));
            assert!(r.is_ok(), "decrypt panicked on plaintext {p:?}");
            counts[2] += 1;

            let (body, enc, et, skew) = opens.new_tree(&mut runner).unwrap().current();
            let r =
                catch_unwind(AssertUnwindSafe(|| run_open(&keys, &body, enc, et.clone(), skew)));
            assert!(
                r.is_ok(),
                "open panicked on {:?} enc={enc} {et:?}",
                String::from_utf8_lossy(&body)
            );
            counts[3] += 1;
        }
    }
    let total: u64 = counts.iter().sum();
    println!(
        "fuzz: {total} executions in {secs} s (decode {}, decrypt {}, crafted plaintext {}, open {})",
        counts[0], counts[1], counts[2], counts[3]
    );
}
