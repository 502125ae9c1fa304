//! Generates the request set for the load scenario (`scripts/load.sh`), signed for *now* so the
//! pushes are inside `server.max_clock_skew_secs`: run it right before each wrk run.
//!
//! ```text
//! cargo run --release --example load_requests -- --mode plain --out plain.req
//! cargo run --release --example load_requests -- --mode safe --count 60000 --out safe.req
//! ```
//!
//! The output's first line is the signed query (`signature`, `timestamp`, `nonce`) every request
//! shares. For `plain` that is all: the plaintext signature covers only token, timestamp and
//! nonce, so `scripts/push_plain.lua` writes a fresh body (its own MsgId) per request. For
//! `safe` each further line is `msg_signature<TAB>body`: one pre-encrypted text push with a
//! MsgId of its own, which `scripts/push_safe.lua` sends once each. Every text contains `price`,
//! which `scripts/load-rules/load.toml` answers. Keys default to the protocol's test key K1.
//! For several accounts (`SCENARIO=accounts scripts/load.sh`) it runs once per account, with
//! that account's `--token` (and, for `safe`, its `--aes-key` and `--app-id`); which path the
//! pushes go to is the wrk script's business, since no signature covers the URL path.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use kefu::wechat::crypto::AesKey;
use kefu::wechat::signature::sign;

/// The account the pushes are addressed to (any `gh_` id; kefu does not check it).
const ACCOUNT: &str = "gh_loadtest00001";

struct Args {
    mode: String,
    out: String,
    count: usize,
    openids: usize,
    token: String,
    aes_key: String,
    app_id: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        mode: String::new(),
        out: String::new(),
        count: 60_000,
        openids: 1_000,
        token: "pamtest".into(),
        aes_key: "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into(),
        app_id: "wxb11529c136998cb6".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--mode" => a.mode = v,
            "--out" => a.out = v,
            "--count" => a.count = num(&v)?,
            "--openids" => a.openids = num(&v)?.max(1),
            "--token" => a.token = v,
            "--aes-key" => a.aes_key = v,
            "--app-id" => a.app_id = v,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.mode != "plain" && a.mode != "safe" {
        return Err("--mode must be plain or safe".into());
    }
    if a.out.is_empty() {
        return Err("--out FILE is required".into());
    }
    Ok(a)
}

/// The OpenID of simulated follower `i`: 28 characters like a real one.
fn openid(i: usize) -> String {
    format!("oLoad{i:023}")
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "load_requests: {e}\nusage: load_requests --mode plain|safe --out FILE [--count N] \
                 [--openids N] [--token T] [--aes-key K] [--app-id ID]"
            );
            return std::process::ExitCode::from(2);
        }
    };
    match generate(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load_requests: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn generate(a: &Args) -> Result<(), String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?;
    let ts = now.as_secs().to_string();
    let nonce = (now.subsec_nanos() % 1_000_000_000).to_string();
    let signature = sign(&[&a.token, &ts, &nonce]);
    let mut out = String::new();
    let _ = writeln!(out, "signature={signature}&timestamp={ts}&nonce={nonce}");

    if a.mode == "safe" {
        let key = AesKey::from_encoding_aes_key(&a.aes_key)
            .map_err(|e| format!("--aes-key is not a usable EncodingAESKey: {e}"))?;
        // 18-digit MsgIds starting with 2: distinct from push_plain.lua's 17-digit ones, and
        // from the previous run's (the seconds are part of the id).
        let base = 200_000_000_000_000_000u64 + (now.as_secs() % 100_000) * 100_000_000_000;
        for i in 0..a.count {
            let xml = format!(
                "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{}]]>\
                 </FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
                 <Content><![CDATA[what is the price of item {i}?]]></Content><MsgId>{}</MsgId></xml>",
                openid(i % a.openids),
                base + i as u64
            );
            let encrypt = key.encrypt(&xml, &a.app_id);
            let msg_signature = sign(&[&a.token, &ts, &nonce, &encrypt]);
            let _ = writeln!(
                out,
                "{msg_signature}\t<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>\
                 <Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
            );
        }
    }
    std::fs::File::create(&a.out)
        .and_then(|mut f| f.write_all(out.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", a.out))
}
