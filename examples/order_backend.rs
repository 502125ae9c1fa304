//! A small order-answering backend for kefu's `forward` reply (README: "Answer from your own
//! service"; interface §7.3). Run it with `cargo run --example order_backend`, point a
//! `[backends.orders]` table at `http://127.0.0.1:9000/kefu`, and forward order questions:
//!
//! ```toml
//! [backends.orders]
//! kind = "http"
//! url = "http://127.0.0.1:9000/kefu"
//! secret = "change-me"            # the same as ORDER_BACKEND_SECRET
//! ```
//!
//! It checks `X-Kefu-Signature` (HMAC-SHA256 of `"<X-Kefu-Timestamp>.<body>"` with the shared
//! secret, the timestamp within 5 minutes) when `ORDER_BACKEND_SECRET` is set, finds the
//! order number (the rule's `order` capture, else the first run of digits in the text), and
//! answers `{"replies":[…]}` with reply tables as rule files write them.
//!
//! Environment: `ORDER_BACKEND_LISTEN` (default `127.0.0.1:9000`), `ORDER_BACKEND_SECRET`
//! (default: none, requests are not checked).

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The orders this shop knows: number, status, where the parcel is.
const ORDERS: &[(&str, &str, &str)] = &[
    ("20240501", "已发货", "顺丰 SF1234567890，预计明天送达"),
    ("20240502", "待发货", "仓库正在打包，今天 18 点前发出"),
    ("20240503", "已签收", "昨天 15:20 由本人签收"),
];

struct Shared {
    /// Empty: requests are not checked.
    secret: String,
}

/// Whether the request carries a valid signature from kefu (constant-time comparison by the
/// `hmac` crate's `verify_slice`).
fn signed(req: &HttpRequest, body: &[u8], secret: &str) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (header("X-Kefu-Timestamp"), header("X-Kefu-Signature")) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if ts.parse::<i64>().map_or(true, |t| (now - t).abs() > 300) {
        return false; // a replayed or badly clocked request
    }
    let Some(hex_sig) = sig.strip_prefix("sha256=") else { return false };
    let Ok(want) = hex::decode(hex_sig) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&want).is_ok()
}

/// The order number the follower asks about.
fn order_number(request: &Value) -> Option<String> {
    let push = &request["push"];
    if let Some(n) = push["captures"]["order"].as_str().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let text = push["content"].as_str().or(push["recognition"].as_str())?;
    let digits: String =
        text.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then_some(digits)
}

/// The answer: reply tables exactly as in rule files.
fn answer(request: &Value) -> Value {
    let replies = match order_number(request) {
        None => vec![json!({"text": "请发送您的订单号，例如：订单 20240501"})],
        Some(n) => match ORDERS.iter().find(|(no, _, _)| *no == n) {
            Some((no, status, detail)) => vec![
                json!({"text": format!("订单 {no}：{status}。{detail}。")}),
                json!({"text": "还有其他问题吗？回复「人工」转人工客服。"}),
            ],
            None => vec![json!({"text": format!("没有找到订单 {n}，请核对订单号。")})],
        },
    };
    json!({ "replies": replies })
}

async fn kefu(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    if !shared.secret.is_empty() && !signed(&req, &body, &shared.secret) {
        return HttpResponse::Unauthorized().body("bad or missing X-Kefu-Signature");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::BadRequest().body("not JSON");
    };
    println!(
        "{} from {}: {}",
        request["id"].as_str().unwrap_or("?"),
        request["openid"].as_str().unwrap_or("?"),
        request["push"]["content"].as_str().unwrap_or("")
    );
    HttpResponse::Ok().json(answer(&request))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::var("ORDER_BACKEND_LISTEN").unwrap_or_else(|_| "127.0.0.1:9000".into());
    let secret = std::env::var("ORDER_BACKEND_SECRET").unwrap_or_default();
    let shared = web::Data::new(Shared { secret });
    let server = HttpServer::new(move || {
        App::new().app_data(shared.clone()).route("/kefu", web::post().to(kefu))
    })
    .workers(1)
    .bind(&listen)?;
    for addr in server.addrs() {
        println!("order_backend listening on http://{addr}/kefu");
    }
    server.run().await
}
