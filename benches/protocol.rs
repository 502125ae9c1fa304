//! Protocol hot path: the signature check, decoding a plaintext push, and the safe-mode
//! msg_signature + decrypt + decode of a push (E3), plus sealing a reply.
//! `cargo bench --bench protocol -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kefu::model::Secret;
use kefu::wechat::crypto::AesKey;
use kefu::wechat::webhook::{self, Keys, Query};
use kefu::wechat::{inbound, signature};

const F01: &str = include_str!("../tests/fixtures/wechat/pushes/F01-text.xml");
const F16: &str = include_str!("../tests/fixtures/wechat/pushes/F16-pic-photo-or-album.xml");

fn vectors() -> toml::Table {
    include_str!("../tests/fixtures/wechat/vectors.toml").parse().expect("vectors")
}

fn protocol(c: &mut Criterion) {
    let v = vectors();
    let s = |sec: &str, k: &str| v[sec][k].as_str().expect("vector").to_string();

    c.bench_function("signature_verify_h1", |b| {
        b.iter(|| {
            signature::verify(
                black_box("f464b24fc39322e44b38aa78f5edd27bd1441696"),
                black_box(&["AAAAA", "1714036504", "1514711492"]),
            )
        })
    });

    c.bench_function("decode_plaintext_text_f01", |b| {
        b.iter(|| inbound::parse(black_box(F01.as_bytes())).expect("F01"))
    });
    c.bench_function("decode_plaintext_pics_event_f16", |b| {
        b.iter(|| inbound::parse(black_box(F16.as_bytes())).expect("F16"))
    });

    let key = AesKey::from_encoding_aes_key(&s("k1", "encoding_aes_key")).expect("K1");
    let keys = Keys {
        token: Secret::new(s("k1", "token")),
        current: Some(key.clone()),
        previous: None,
        app_id: s("k1", "app_id"),
        require_encryption: false,
        max_clock_skew_secs: 0,
    };
    let q = Query {
        signature: Some(s("e3", "signature")),
        timestamp: Some(s("e3", "timestamp")),
        nonce: Some(s("e3", "nonce")),
        encrypt_type: Some("aes".into()),
        msg_signature: Some(s("e3", "msg_signature")),
        ..Query::default()
    };
    let body = format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
        s("e3", "to_user"),
        s("e3", "encrypt")
    );
    let encrypt = s("e3", "encrypt");
    c.bench_function("decrypt_e3", |b| b.iter(|| key.decrypt(black_box(&encrypt)).expect("E3")));
    c.bench_function("safe_mode_open_e3", |b| {
        b.iter(|| webhook::open(&keys, black_box(&q), black_box(body.as_bytes()), 0).expect("E3"))
    });
    let opened = webhook::open(&keys, &q, body.as_bytes(), 0).expect("E3");
    let reply = s("e4", "msg");
    c.bench_function("seal_reply_e4", |b| {
        b.iter(|| webhook::seal(&keys, &opened, black_box(&reply)))
    });
}

criterion_group!(benches, protocol);
criterion_main!(benches);
