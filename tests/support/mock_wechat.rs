//! Test support, outside the kefu library (included by `tests/it` and
//! `examples/mock_wechat.rs`): [`MockWechat`], a stand-in for `api.weixin.qq.com` on loopback. It records
//! every request, counts them per path, and answers from per-path scripts (a queue of canned
//! answers, each with an optional delay to simulate timeouts) or sensible defaults. It runs its
//! own actix system on its own thread, so it works from any test, runtime or not, and from the
//! `mock_wechat` example used by load scripts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The decoded query (last value wins for a repeated key).
    pub query: BTreeMap<String, String>,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// A canned answer.
#[derive(Clone, Debug)]
pub struct MockResponse {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    /// Wait this long before answering (longer than the client's timeout = a timeout after
    /// the request was sent).
    pub delay: Duration,
    /// Extra response headers (`Retry-After`, say).
    pub headers: Vec<(&'static str, String)>,
}

impl MockResponse {
    pub fn json(v: Value) -> Self {
        MockResponse {
            status: 200,
            body: v.to_string().into_bytes(),
            content_type: "application/json; charset=utf-8",
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }
    /// `{"errcode":0,"errmsg":"ok"}`.
    pub fn ok() -> Self {
        Self::json(json!({"errcode": 0, "errmsg": "ok"}))
    }
    /// `{"errcode":code,"errmsg":errmsg}`.
    pub fn error(code: i64, errmsg: &str) -> Self {
        Self::json(json!({"errcode": code, "errmsg": errmsg}))
    }
    /// A bare HTTP status with a non-JSON body (an unknown path, a gateway error).
    pub fn status(status: u16) -> Self {
        MockResponse {
            status,
            body: format!("HTTP {status}").into_bytes(),
            content_type: "text/plain",
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }
    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// The same answer with one more header.
    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

pub const STABLE_TOKEN_PATH: &str = "/cgi-bin/stable_token";
pub const CLASSIC_TOKEN_PATH: &str = "/cgi-bin/token";
pub const MEDIA_UPLOAD_PATH: &str = "/cgi-bin/media/upload";
pub const CUSTOM_SEND_PATH: &str = "/cgi-bin/message/custom/send";
/// Every media id the mock issues starts with this; custom/send answers 40007 for one it never
/// issued or has forgotten. Other ids (tests send "MEDIA_ID" and the like) are not checked.
pub const MOCK_MEDIA_PREFIX: &str = "MOCK_MEDIA_";

/// One upload the mock received at `/cgi-bin/media/upload`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaUpload {
    /// The `type` query value.
    pub media_type: String,
    /// Size of the multipart field `media`.
    pub bytes: usize,
    /// Its filename.
    pub filename: String,
    /// The id the mock issued (empty when it refused the upload).
    pub media_id: String,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<RecordedRequest>>,
    scripts: Mutex<HashMap<String, VecDeque<MockResponse>>>,
    defaults: Mutex<HashMap<String, MockResponse>>,
    counts: Mutex<HashMap<String, usize>>,
    tokens_issued: AtomicU64,
    /// Off: only counters are kept (long load runs would otherwise grow without bound).
    not_recording: std::sync::atomic::AtomicBool,
    last_token: Mutex<Option<String>>,
    uploads: Mutex<Vec<MediaUpload>>,
    /// Media ids issued and not forgotten.
    live_media: Mutex<std::collections::HashSet<String>>,
    media_issued: AtomicU64,
}

/// A mock WeChat API server on `127.0.0.1:0`. Dropping it stops the server.
pub struct MockWechat {
    state: Arc<State>,
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    system: actix_web::rt::System,
}

impl MockWechat {
    /// Starts on a free loopback port. Panics if it cannot bind (test support only).
    pub fn start() -> MockWechat {
        match Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))) {
            Ok(m) => m,
            Err(e) => panic!("MockWechat cannot bind 127.0.0.1:0: {e}"),
        }
    }

    /// Starts on `addr` (the example binary picks a fixed port).
    pub fn start_on(addr: SocketAddr) -> std::io::Result<MockWechat> {
        let state = Arc::new(State::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let st = state.clone();
        std::thread::Builder::new().name("mock-wechat".into()).spawn(move || {
            let sys = actix_web::rt::System::new();
            let started = sys.block_on(async move {
                let data = web::Data::new(st);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .app_data(web::PayloadConfig::new(16 << 20))
                        .default_service(web::to(answer))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .bind(addr)?;
                let bound = server.addrs().first().copied().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address bound")
                })?;
                let server = server.run();
                let handle = server.handle();
                actix_web::rt::spawn(server);
                Ok::<_, std::io::Error>((bound, handle))
            });
            match started {
                Ok((bound, handle)) => {
                    let _ = tx.send(Ok((bound, handle, actix_web::rt::System::current())));
                    let _ = sys.run();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
        let (addr, handle, system) = rx.recv().map_err(|_| {
            std::io::Error::other("the mock server thread ended before it started")
        })??;
        Ok(MockWechat { state, addr, handle, system })
    }

    /// `http://127.0.0.1:PORT`, for `wechat.api_base`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues an answer for the next request to `path` (answers are used in order, then the
    /// path's default takes over).
    pub fn push(&self, path: &str, resp: MockResponse) {
        self.state.scripts.lock().entry(path.to_string()).or_default().push_back(resp);
    }

    pub fn push_json(&self, path: &str, v: Value) {
        self.push(path, MockResponse::json(v));
    }

    pub fn push_error(&self, path: &str, code: i64, errmsg: &str) {
        self.push(path, MockResponse::error(code, errmsg));
    }

    /// Replaces the answer given to `path` once its queue is empty.
    pub fn set_default(&self, path: &str, resp: MockResponse) {
        self.state.defaults.lock().insert(path.to_string(), resp);
    }

    /// Keeps (true, the default) or drops request details; per-path counters are always kept.
    pub fn set_recording(&self, on: bool) {
        self.state.not_recording.store(!on, Ordering::SeqCst);
    }

    /// Requests so far across all paths.
    pub fn total_count(&self) -> usize {
        self.state.counts.lock().values().sum()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.state.requests.lock().iter().filter(|r| r.path == path).cloned().collect()
    }

    /// How many requests reached `path`.
    pub fn count(&self, path: &str) -> usize {
        self.state.counts.lock().get(path).copied().unwrap_or(0)
    }

    /// Requests to either token endpoint.
    pub fn token_fetches(&self) -> usize {
        self.count(STABLE_TOKEN_PATH) + self.count(CLASSIC_TOKEN_PATH)
    }

    /// Every media upload so far, in arrival order.
    pub fn uploads(&self) -> Vec<MediaUpload> {
        self.state.uploads.lock().clone()
    }

    /// Forgets an issued media id, as WeChat does after 3 days: a custom/send naming it gets
    /// 40007.
    pub fn forget_media(&self, media_id: &str) {
        self.state.live_media.lock().remove(media_id);
    }

    /// Forgets every media id issued so far.
    pub fn forget_all_media(&self) {
        self.state.live_media.lock().clear();
    }

    /// The last access token the default token answer handed out (`MOCK_TOKEN_<n>`).
    pub fn last_token(&self) -> Option<String> {
        self.state.last_token.lock().clone()
    }
}

impl Drop for MockWechat {
    fn drop(&mut self) {
        // `stop` sends its command at once; the returned future only waits for completion.
        drop(self.handle.stop(false));
        self.system.stop();
    }
}

async fn answer(req: HttpRequest, body: web::Bytes, state: web::Data<Arc<State>>) -> HttpResponse {
    let path = req.path().to_string();
    if !state.not_recording.load(Ordering::SeqCst) {
        record(&req, &path, &body, &state);
    }
    // Counted after recording, so a test that sees the count also sees the request.
    *state.counts.lock().entry(path.clone()).or_default() += 1;

    // Media: an upload is logged and issued an id; a send naming an id of the mock's own that it
    // does not know (never issued, or forgotten) is refused as WeChat refuses expired media.
    if path == MEDIA_UPLOAD_PATH && state.scripts.lock().get(&path).is_none_or(|q| q.is_empty()) {
        return json_response(upload(&req, &body, &state));
    }
    if path == CUSTOM_SEND_PATH && names_unknown_media(&body, &state) {
        return json_response(json!({"errcode": 40007, "errmsg": "invalid media_id hint: [mock]"}));
    }
    let scripted = state.scripts.lock().get_mut(&path).and_then(VecDeque::pop_front);
    let resp =
        scripted.or_else(|| state.defaults.lock().get(&path).cloned()).unwrap_or_else(|| {
            if path.ends_with(CHAT_COMPLETIONS_SUFFIX) {
                chat_echo(&body)
            } else {
                builtin(&state, &path)
            }
        });
    if !resp.delay.is_zero() {
        actix_web::rt::time::sleep(resp.delay).await;
    }
    let status = actix_web::http::StatusCode::from_u16(resp.status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = HttpResponse::build(status);
    out.content_type(resp.content_type);
    for (name, value) in &resp.headers {
        out.insert_header((*name, value.as_str()));
    }
    out.body(resp.body)
}

/// An OpenAI-compatible server's path (`{base_url}/chat/completions`): the mock plays the model.
pub const CHAT_COMPLETIONS_SUFFIX: &str = "/chat/completions";

/// The mock model's answer when nothing is scripted: `答：<the last user message>`, with a
/// `usage` of 10 prompt tokens per message and 5 completion tokens (so tests can check both the
/// answer each follower gets and the token counter).
fn chat_echo(body: &[u8]) -> MockResponse {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    MockResponse::json(chat_completion(&format!("答：{last_user}"), messages.len() as u64 * 10, 5))
}

/// A chat-completions answer body with `content` and the given `usage`.
pub fn chat_completion(content: &str, prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}
    })
}

fn json_response(v: Value) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json; charset=utf-8").body(v.to_string())
}

/// `POST /cgi-bin/media/upload?type=T`, multipart field `media`: issues
/// `MOCK_MEDIA_<T>_<n>` (a thumb's answer names it `thumb_media_id`, as WeChat's does).
fn upload(req: &HttpRequest, body: &[u8], state: &State) -> Value {
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(req.query_string().as_bytes()).into_owned().collect();
    let media_type = query.get("type").cloned().unwrap_or_default();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let part = multipart_field(&content_type, body, "media");
    let valid = matches!(media_type.as_str(), "image" | "voice" | "video" | "thumb");
    let (filename, bytes) = part.clone().unwrap_or_default();
    let media_id = if valid && part.is_some() {
        let n = state.media_issued.fetch_add(1, Ordering::SeqCst) + 1;
        format!("{MOCK_MEDIA_PREFIX}{}_{n}", media_type.to_ascii_uppercase())
    } else {
        String::new()
    };
    state.uploads.lock().push(MediaUpload {
        media_type: media_type.clone(),
        bytes: bytes.len(),
        filename,
        media_id: media_id.clone(),
    });
    if !valid {
        return json!({"errcode": 40004, "errmsg": "invalid media type"});
    }
    if part.is_none() {
        return json!({"errcode": 41005, "errmsg": "media data missing"});
    }
    state.live_media.lock().insert(media_id.clone());
    let id_field = if media_type == "thumb" { "thumb_media_id" } else { "media_id" };
    json!({"type": media_type, id_field: media_id, "created_at": 1_700_000_000})
}

/// The (filename, content) of the multipart field `name`, from a `multipart/form-data` body.
fn multipart_field(content_type: &str, body: &[u8], name: &str) -> Option<(String, Vec<u8>)> {
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let delim = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
    };
    let mut at = find(body, delim.as_bytes(), 0)?;
    loop {
        let head_start = at + delim.len() + 2;
        let head_end = find(body, b"\r\n\r\n", head_start)?;
        let head = String::from_utf8_lossy(&body[head_start..head_end]).into_owned();
        let next = find(body, format!("\r\n{delim}").as_bytes(), head_end + 4)?;
        if head.contains(&format!("name=\"{name}\"")) {
            let filename = head
                .split("filename=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string();
            return Some((filename, body[head_end + 4..next].to_vec()));
        }
        at = next + 2;
    }
}

/// Whether a custom/send body names a media id of the mock's own that is not live.
fn names_unknown_media(body: &[u8], state: &State) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return false };
    let Some(msgtype) = v.get("msgtype").and_then(Value::as_str) else { return false };
    let inner = &v[msgtype];
    let live = state.live_media.lock();
    ["media_id", "thumb_media_id"].iter().any(|f| {
        inner
            .get(*f)
            .and_then(Value::as_str)
            .is_some_and(|id| id.starts_with(MOCK_MEDIA_PREFIX) && !live.contains(id))
    })
}

fn record(req: &HttpRequest, path: &str, body: &[u8], state: &State) {
    let query = url::form_urlencoded::parse(req.query_string().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    state.requests.lock().push(RecordedRequest {
        method: req.method().to_string(),
        path: path.to_string(),
        query,
        headers,
        body: body.to_vec(),
    });
}

/// Defaults shaped like WeChat's answers: a fresh numbered token from the token endpoints,
/// empty lists from the list endpoints, `{"errcode":0,"errmsg":"ok"}` elsewhere.
fn builtin(state: &State, path: &str) -> MockResponse {
    match path {
        STABLE_TOKEN_PATH | CLASSIC_TOKEN_PATH => {
            let n = state.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
            let token = format!("MOCK_TOKEN_{n}");
            *state.last_token.lock() = Some(token.clone());
            MockResponse::json(json!({"access_token": token, "expires_in": 7200}))
        }
        "/cgi-bin/customservice/getkflist" => MockResponse::json(json!({"kf_list": []})),
        "/cgi-bin/customservice/getonlinekflist" => {
            MockResponse::json(json!({"kf_online_list": []}))
        }
        "/customservice/kfsession/getsession" => MockResponse::json(
            json!({"errcode": 0, "errmsg": "ok", "kf_account": "", "createtime": 0}),
        ),
        "/customservice/kfsession/getsessionlist" => MockResponse::json(json!({"sessionlist": []})),
        "/customservice/kfsession/getwaitcase" => {
            MockResponse::json(json!({"count": 0, "waitcaselist": []}))
        }
        "/customservice/msgrecord/getmsglist" => {
            MockResponse::json(json!({"recordlist": [], "number": 0, "msgid": 1}))
        }
        _ => MockResponse::ok(),
    }
}
