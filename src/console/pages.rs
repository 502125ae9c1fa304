//! The console's pages and form handlers. Each handler checks the session (pages) or the
//! session, origin and CSRF token (forms), calls the same functions as the admin API, and
//! renders a template from plain view rows: every string a follower or WeChat wrote reaches
//! the page through askama's HTML escaping.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::header::LOCATION;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::security::{self, ConsoleState, Refusal, Session, SignInError};
use crate::api::{ApiClient, ApiError};
use crate::convlog::{LogOutcome, LogRecord, Via};
use crate::http::accounts::{AccountChoice, account_param};
use crate::metrics::{Metrics, RuleLabels, label_value};
use crate::model::{KfAccount, OpenId, OutboxAction, SharedClock, Source};
use crate::pipeline::conversations::{self, Conversation, WindowState};
use crate::pipeline::gate::{GateError, Gated};
use crate::rules::Rules;
use crate::store::{OutboxEntry, OutboxStatus, Store};

type Form = web::Form<HashMap<String, String>>;

// ---- responses ----------------------------------------------------------------------------

fn html(t: &impl Template) -> HttpResponse {
    match t.render() {
        Ok(body) => {
            let mut r = HttpResponse::Ok();
            security::headers(&mut r);
            r.content_type("text/html; charset=utf-8").body(body)
        }
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            HttpResponse::InternalServerError().body("the console page could not be rendered")
        }
    }
}

fn see_other(to: &str) -> HttpResponse {
    let mut r = HttpResponse::SeeOther();
    security::headers(&mut r);
    r.insert_header((LOCATION, to)).finish()
}

/// Back to `to`, which shows `msg` once (`ok`: as a success, else as an error).
fn back_with(state: &ConsoleState, s: &Session, to: &str, ok: bool, msg: String) -> HttpResponse {
    state.set_flash(&s.id, ok, msg);
    see_other(to)
}

fn not_found() -> HttpResponse {
    HttpResponse::NotFound().finish()
}

/// The account a console request is about (interface §10), as its pages carry it: with
/// several accounts every link, form, redirect and live URL of a page names the page's account
/// (`?account=NAME`), so a form posted from account cafe's page acts on cafe. Read from the
/// [`AccountChoice`] the account middleware ([`crate::http::accounts::select`]) adds; a server
/// built without accounts has one account and nothing to carry.
pub(super) struct Here {
    choice: Option<AccountChoice>,
    /// Whether the request named its account (`?account=`): only then does an answer to a
    /// visitor who may not be signed in (the sign-in page, its redirect) repeat the name.
    asked: bool,
}

impl Here {
    fn of(req: &HttpRequest) -> Here {
        Here {
            choice: req.app_data::<web::Data<AccountChoice>>().map(|c| c.get_ref().clone()),
            asked: account_param(req.query_string()).is_some(),
        }
    }

    /// `?account=NAME` with several accounts, else "" (see [`AccountChoice::query`]).
    fn query(&self) -> String {
        self.choice.as_ref().map(AccountChoice::query).unwrap_or_default()
    }

    /// `path` (which has no query of its own) with the account's query.
    fn url(&self, path: &str) -> String {
        format!("{path}{}", self.query())
    }

    /// [`Self::url`] for an answer a signed-out visitor may see: the account only when the
    /// request named it itself.
    fn public_url(&self, path: &str) -> String {
        format!("{path}{}", self.public_query())
    }

    /// [`Self::query`] when the request named its account, else "".
    fn public_query(&self) -> String {
        if self.asked { self.query() } else { String::new() }
    }

    /// Several accounts are configured.
    fn several(&self) -> bool {
        self.choice.as_ref().is_some_and(AccountChoice::several)
    }
}

impl actix_web::FromRequest for Here {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(Ok(Here::of(req)))
    }
}

/// The sign-in page, for a request without a live session (its account kept when it named
/// one, so signing in leads back to it).
fn to_login(here: &Here) -> HttpResponse {
    see_other(&here.public_url("/console/login"))
}

/// The session of a page request, or the answer to give instead (404 off, sign-in page).
fn page_session(
    state: &ConsoleState,
    req: &HttpRequest,
    here: &Here,
) -> Result<Session, HttpResponse> {
    if !state.enabled() {
        return Err(not_found());
    }
    state.session(req).ok_or_else(|| to_login(here))
}

/// A page request's live session and its account, as a handler argument: without a session
/// the request is answered with the sign-in page (or 404 while the console is off) before the
/// handler runs.
pub(super) struct SignedIn(Session, Here);

impl actix_web::FromRequest for SignedIn {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let here = Here::of(req);
        let answer = match req.app_data::<web::Data<Arc<ConsoleState>>>() {
            Some(state) => page_session(state, req, &here),
            None => Err(not_found()),
        };
        std::future::ready(answer.map(|s| SignedIn(s, here)).map_err(|r| {
            actix_web::error::InternalError::from_response("console sign-in", r).into()
        }))
    }
}

/// The session of a form post, or the refusal: 403 for a cross-site request.
fn post_session(
    state: &ConsoleState,
    req: &HttpRequest,
    form: &HashMap<String, String>,
) -> Result<Session, HttpResponse> {
    if !state.enabled() {
        return Err(not_found());
    }
    match state.check_post(req, form.get("csrf").map(String::as_str)) {
        Ok(s) => Ok(s),
        Err(Refusal::SignedOut) => Err(to_login(&Here::of(req))),
        Err(Refusal::CrossSite) => {
            tracing::warn!(path = %req.path(), "console: cross-site or token-less request refused");
            let mut r = HttpResponse::Forbidden();
            security::headers(&mut r);
            Err(r.content_type("text/plain; charset=utf-8").body(
                "拒绝：跨站请求（来源或 CSRF 令牌不符）。请从控制台页面重新操作。\n\
                 refused: cross-site request (origin or CSRF token mismatch)",
            ))
        }
    }
}

/// What every signed-in page shares: the CSRF token for its forms, the active tab, a message
/// carried over from the last action, and its account: the name in the header and the
/// switcher (with several accounts), and the query every link and form carries.
struct Chrome {
    csrf: String,
    active: &'static str,
    ok: String,
    err: String,
    /// Several accounts are configured: the header shows `account` and the switcher.
    several: bool,
    /// The page's account (`default` for the `[wechat]` one).
    account: String,
    /// The switcher's choices, the page's account selected.
    accounts: Vec<AccountOption>,
    /// `?account=NAME` with several accounts, else "": appended to every console URL the page
    /// names (links, form actions; the script reads `account` from `<body data-account>`).
    q: String,
}

/// One choice of the account switcher.
struct AccountOption {
    name: String,
    selected: bool,
}

impl Chrome {
    fn new(s: &Session, here: &Here, active: &'static str) -> Chrome {
        let (ok, err) = match &s.flash {
            Some((true, m)) => (m.clone(), String::new()),
            Some((false, m)) => (String::new(), m.clone()),
            None => (String::new(), String::new()),
        };
        let account = here.choice.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        let accounts = here
            .choice
            .iter()
            .flat_map(|c| c.all.iter())
            .map(|n| AccountOption { name: n.clone(), selected: *n == account })
            .collect();
        Chrome {
            csrf: s.csrf.clone(),
            active,
            ok,
            err,
            several: here.several(),
            account,
            accounts,
            q: here.query(),
        }
    }

    /// Where the switcher goes: the same page of the other account (a conversation's page
    /// goes to the other account's list: an OpenID belongs to one account).
    fn switch_to(&self) -> String {
        format!("/console/{}", self.active)
    }
}

// ---- formatting ---------------------------------------------------------------------------

/// Beijing time (UTC+8), the account's time zone: `2024-05-01 16:00:00`.
fn fmt_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis((ms + 8 * 3_600_000) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

fn source_label(s: Source) -> &'static str {
    match s {
        Source::Follower => "粉丝",
        Source::Rule => "规则",
        Source::Backend => "后端",
        Source::Console => "控制台",
    }
}

fn outcome_label(o: Option<LogOutcome>) -> &'static str {
    match o {
        None => "",
        Some(LogOutcome::Sent) => "已发送",
        Some(LogOutcome::Failed) => "发送失败",
        Some(LogOutcome::Dropped) => "已丢弃",
        Some(LogOutcome::Held) => "待下次互动",
    }
}

fn trigger_label(t: &str) -> &'static str {
    match t {
        "message" => "消息",
        "menu" => "菜单",
        "subscribe" => "关注",
        "scan" => "扫码",
        "payment" => "支付",
        _ => "其他",
    }
}

/// Why the reply box is disabled, in the operator's words.
fn blocked_text(w: &WindowState) -> String {
    let zh = match w.blocked {
        None => return String::new(),
        Some("unsubscribed") => "粉丝已取消关注，无法再给他发消息。",
        Some("exhausted") => "本次窗口的客服消息额度已用完，请等待粉丝的下一条消息。",
        Some(_) => "窗口已关闭：粉丝最近没有互动，客服消息无法送达。请等待粉丝再次发消息。",
    };
    format!("{zh}（{}）", w.blocked_reason.clone().unwrap_or_default())
}

/// A follower's window in a few words and the numbers the page shows.
struct WindowRow {
    open: bool,
    state: String,
    triggers: String,
    quota: String,
    /// Unix seconds when the last grant expires (the countdown), 0 for none.
    expires_at: i64,
    held: u64,
    pending: u64,
    blocked: String,
}

impl WindowRow {
    fn of(w: &WindowState) -> WindowRow {
        let triggers = w
            .view
            .grants
            .iter()
            .map(|g| match g.limit {
                Some(l) => format!("{} {}/{l}", trigger_label(g.trigger.as_str()), g.used),
                None => format!("{} {}/不限", trigger_label(g.trigger.as_str()), g.used),
            })
            .collect::<Vec<_>>()
            .join("，");
        WindowRow {
            open: w.view.open,
            state: match w.blocked {
                None => "开放".into(),
                Some("unsubscribed") => "已取消关注".into(),
                Some("exhausted") => "额度用完".into(),
                Some(_) => "已关闭".into(),
            },
            triggers: if triggers.is_empty() { "-".into() } else { triggers },
            quota: match w.quota_left {
                Some(q) => q.to_string(),
                None => "不限".into(),
            },
            expires_at: w.expires_at.unwrap_or(0),
            held: w.view.held,
            pending: w.view.pending,
            blocked: blocked_text(w),
        }
    }
}

// ---- sign-in ------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    error: String,
    /// The account the visitor asked for (`?account=NAME`, so signing in leads back to it),
    /// else "": the sign-in page names no account on its own.
    q: String,
}

pub(super) async fn login_page(
    req: HttpRequest,
    here: Here,
    state: web::Data<Arc<ConsoleState>>,
) -> HttpResponse {
    if !state.enabled() {
        return not_found();
    }
    if state.session(&req).is_some() {
        return see_other(&here.url("/console/conversations"));
    }
    html(&LoginPage { error: String::new(), q: here.public_query() })
}

pub(super) async fn login(
    req: HttpRequest,
    here: Here,
    state: web::Data<Arc<ConsoleState>>,
    form: Form,
) -> HttpResponse {
    if !state.enabled() {
        return not_found();
    }
    // A sign-in posted from another site is refused too (login CSRF).
    if !security::same_origin(&req) {
        return HttpResponse::Forbidden().body("refused: cross-site sign-in");
    }
    let client = req.peer_addr().map(|a| a.ip());
    match state.sign_in(client, form.get("token").map(String::as_str).unwrap_or("")) {
        Ok(s) => {
            let mut r = HttpResponse::SeeOther();
            security::headers(&mut r);
            r.insert_header((LOCATION, here.public_url("/console/conversations")))
                .insert_header(("Set-Cookie", state.cookie(&s)))
                .finish()
        }
        Err(e) => {
            let (status, error) = match e {
                SignInError::Wrong => {
                    tracing::warn!(client = ?client, "console: wrong admin token");
                    (
                        actix_web::http::StatusCode::UNAUTHORIZED,
                        "令牌不正确（admin.token）。".to_string(),
                    )
                }
                SignInError::TooMany(wait) => (
                    actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                    format!("尝试次数过多，请 {} 秒后再试。", wait.as_secs().max(1)),
                ),
            };
            let mut r = html(&LoginPage { error, q: here.public_query() });
            *r.status_mut() = status;
            r
        }
    }
}

pub(super) async fn logout(
    req: HttpRequest,
    here: Here,
    state: web::Data<Arc<ConsoleState>>,
    form: Form,
) -> HttpResponse {
    let s = match post_session(&state, &req, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    state.sign_out(&s.id);
    let mut r = HttpResponse::SeeOther();
    security::headers(&mut r);
    r.insert_header((LOCATION, here.public_url("/console/login")))
        .insert_header(("Set-Cookie", state.clear_cookie()))
        .finish()
}

pub(super) async fn home(SignedIn(_, here): SignedIn) -> HttpResponse {
    see_other(&here.url("/console/conversations"))
}

// ---- conversations ------------------------------------------------------------------------

struct ConvRow {
    openid: String,
    last_time: String,
    last_source: String,
    last_text: String,
    window: WindowRow,
}

impl ConvRow {
    fn of(c: &Conversation) -> ConvRow {
        ConvRow {
            openid: c.activity.openid.to_string(),
            last_time: fmt_ms(c.activity.last_at_ms),
            last_source: c
                .activity
                .last
                .as_ref()
                .map(|r| source_label(r.source))
                .unwrap_or("")
                .into(),
            last_text: c.activity.last.as_ref().map(|r| r.text.clone()).unwrap_or_default(),
            window: WindowRow::of(&c.window),
        }
    }
}

#[derive(Template)]
#[template(path = "console/conversations.html")]
struct ConversationsPage {
    chrome: Chrome,
    list: ConversationRows,
    error: String,
    /// Set when `log.retention` is `0s`: no conversation is logged, say so.
    log_off: bool,
}

#[derive(Template)]
#[template(path = "console/conversation_rows.html")]
struct ConversationRows {
    rows: Vec<ConvRow>,
    /// The cursor past the last row shown, when there are more followers than the page holds.
    more: String,
    /// The account's query for the rows' links (see [`Chrome::q`]).
    q: String,
    /// ` --account NAME` for the CLI hint with several accounts, else "".
    cli_account: String,
}

impl ConversationRows {
    fn new(rows: Vec<ConvRow>, more: String, here: &Here) -> ConversationRows {
        let cli_account = match &here.choice {
            Some(c) if c.several() => format!(" --account {}", c.name),
            _ => String::new(),
        };
        ConversationRows { rows, more, q: here.query(), cli_account }
    }
}

/// The followers the list page shows at most; more are named by a cursor for the CLI.
const LIST_ROWS: usize = 200;

/// The list's rows, the cursor past them when there are more (else ""), and an error text.
async fn conversation_list(
    store: &dyn Store,
    clock: &SharedClock,
) -> (Vec<ConvRow>, String, String) {
    match conversations::page(store, LIST_ROWS, None, clock.now_secs()).await {
        Ok(p) => (
            p.conversations.iter().map(ConvRow::of).collect(),
            p.next_before.map(|c| c.to_string()).unwrap_or_default(),
            String::new(),
        ),
        Err(e) => (Vec::new(), String::new(), format!("读取会话失败：{e}")),
    }
}

pub(super) async fn conversations(
    SignedIn(s, here): SignedIn,
    store: web::Data<Arc<dyn Store>>,
    clock: web::Data<SharedClock>,
) -> HttpResponse {
    let (rows, more, error) = conversation_list(store.as_ref().as_ref(), &clock).await;
    let log_off = store.log_retention_ms() <= 0;
    let chrome = Chrome::new(&s, &here, "conversations");
    let list = ConversationRows::new(rows, more, &here);
    html(&ConversationsPage { chrome, list, error, log_off })
}

/// The list's rows alone, for the live update.
pub(super) async fn conversation_rows(
    SignedIn(_, here): SignedIn,
    store: web::Data<Arc<dyn Store>>,
    clock: web::Data<SharedClock>,
) -> HttpResponse {
    let (rows, more, _) = conversation_list(store.as_ref().as_ref(), &clock).await;
    html(&ConversationRows::new(rows, more, &here))
}

struct MsgRow {
    time: String,
    /// `in` (the follower) or `out`.
    side: &'static str,
    source: &'static str,
    kind: String,
    via: &'static str,
    text: String,
    outcome: &'static str,
    /// sent, failed, dropped, held (a CSS class).
    outcome_class: &'static str,
    reason: String,
    rule: String,
}

impl MsgRow {
    fn of(r: &LogRecord) -> MsgRow {
        MsgRow {
            time: fmt_ms(r.at_ms),
            side: if r.source == Source::Follower { "in" } else { "out" },
            source: source_label(r.source),
            kind: r.kind.clone(),
            via: match r.via {
                Some(Via::Passive) => "被动回复",
                Some(Via::CustomSend) => "客服消息",
                None => "",
            },
            text: r.text.clone(),
            outcome: outcome_label(r.outcome),
            outcome_class: r.outcome.map_or("", LogOutcome::as_str),
            reason: r.reason.clone().unwrap_or_default(),
            rule: r.rule.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "console/thread.html")]
struct ThreadPage {
    chrome: Chrome,
    openid: String,
    window: WindowRow,
    messages: Vec<MsgRow>,
    error: String,
}

#[derive(Template)]
#[template(path = "console/thread_live.html")]
struct ThreadLive {
    chrome: Chrome,
    openid: String,
    window: WindowRow,
    messages: Vec<MsgRow>,
}

async fn thread_parts(
    store: &dyn Store,
    clock: &SharedClock,
    openid: &OpenId,
) -> Result<(WindowRow, Vec<MsgRow>), String> {
    match conversations::show(store, openid, None, clock.now_secs()).await {
        Ok(t) => Ok((WindowRow::of(&t.window), t.messages.iter().map(MsgRow::of).collect())),
        Err(e) => Err(format!("读取会话失败：{e}")),
    }
}

/// One conversation: the whole page at `/console/conversations/{openid}`, or its live part
/// alone (window panel, messages, reply box) at `/console/fragments/thread/{openid}`, which
/// the page's script fetches when an event for this follower arrives.
pub(super) async fn thread(
    req: HttpRequest,
    path: web::Path<String>,
    SignedIn(s, here): SignedIn,
    store: web::Data<Arc<dyn Store>>,
    clock: web::Data<SharedClock>,
) -> HttpResponse {
    let whole = !req.path().starts_with("/console/fragments/");
    let Ok(openid) = OpenId::parse(&path) else { return not_found() };
    let chrome = Chrome::new(&s, &here, "conversations");
    let (window, messages, error) =
        match thread_parts(store.as_ref().as_ref(), &clock, &openid).await {
            Ok((window, messages)) => (window, messages, String::new()),
            Err(e) if !whole => return HttpResponse::ServiceUnavailable().body(e),
            Err(e) => {
                let unknown = crate::ledger::Window::default().view(openid.clone(), 0, 0);
                (WindowRow::of(&WindowState::of(unknown)), Vec::new(), e)
            }
        };
    let openid = openid.to_string();
    if whole {
        html(&ThreadPage { chrome, openid, window, messages, error })
    } else {
        html(&ThreadLive { chrome, openid, window, messages })
    }
}

// An actix handler takes each piece of app data it reads as an argument.
#[allow(clippy::too_many_arguments)]
pub(super) async fn reply(
    req: HttpRequest,
    here: Here,
    path: web::Path<String>,
    state: web::Data<Arc<ConsoleState>>,
    store: web::Data<Arc<dyn Store>>,
    api: web::Data<ApiClient>,
    rules: web::Data<Arc<Rules>>,
    clock: web::Data<SharedClock>,
    form: Form,
) -> HttpResponse {
    let s = match post_session(&state, &req, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(openid) = OpenId::parse(&path) else { return not_found() };
    let back = here.url(&format!("/console/conversations/{openid}"));
    let text = form.get("text").map(String::as_str).unwrap_or("");
    let body = serde_json::json!({ "text": text });
    let send = match conversations::parse_reply(&openid, &body, rules.current().window()) {
        Ok(b) => b,
        Err(e) => return back_with(&state, &s, &back, false, format!("没有发送：{e}")),
    };
    let flash =
        match conversations::reply(store.as_ref().as_ref(), &api, &send, clock.now_ms()).await {
            Ok(Gated::Sent { .. }) => ("ok", "已发送。".to_string()),
            Ok(Gated::DryRun { .. }) => {
                ("ok", "演练模式：未配置 app_id/app_secret，消息已计入窗口但没有发出。".to_string())
            }
            Ok(Gated::Refused(reason)) => ("err", format!("没有发送：{reason}")),
            Err(GateError::Api(e)) => ("err", format!("微信拒绝了这条消息：{}", explain(&e))),
            Err(GateError::Store(e)) => ("err", format!("没有发送：窗口账本不可用（{e}）")),
        };
    back_with(&state, &s, &back, flash.0 == "ok", flash.1)
}

/// WeChat's error as the page explains it: errcode, meaning and what to do.
fn explain(e: &ApiError) -> String {
    let zh = match e.errcode() {
        Some(40164) => {
            "本机 IP 不在公众号的 IP 白名单中：在 公众平台 → 设置与开发 → 基本配置 → IP 白名单 中加入本机出口 IP。"
        }
        Some(65406) => "这个客服账号已经存在：换一个账号名，或用“修改昵称”。",
        Some(65400) => "公众号还没有开通新版客服功能：先在公众平台开通客服功能。",
        Some(65401) => "客服账号无效：确认账号名（前缀@公众号微信号）是否正确。",
        Some(65403) => "客服昵称不合法：昵称最长 16 个字，不能含特殊字符。",
        Some(65407) => "邀请对象已经是本公众号的客服。",
        Some(65408) => "已经邀请过这个微信号，等待对方确认。",
        Some(65409) => "每个客服账号只能绑定一个微信号。",
        Some(65413) => "没有对应的粉丝会话。",
        Some(45015) => "回复时间超过限制：粉丝 48 小时内没有互动。",
        Some(45047) => "客服消息下发条数超过上限：等待粉丝的下一条消息。",
        Some(48001) => "公众号没有调用这个接口的权限（未认证或未开通客服消息）。",
        _ => "",
    };
    if zh.is_empty() { e.to_string() } else { format!("{zh} —— {e}") }
}

// ---- customer-service accounts ------------------------------------------------------------

struct AccountRow {
    account: String,
    nickname: String,
    wechat: String,
    invite: String,
    online: String,
    sessions: String,
}

#[derive(Template)]
#[template(path = "console/accounts.html")]
struct AccountsPage {
    chrome: Chrome,
    accounts: Vec<AccountRow>,
    error: String,
}

pub(super) async fn accounts(
    SignedIn(s, here): SignedIn,
    api: web::Data<ApiClient>,
) -> HttpResponse {
    let chrome = Chrome::new(&s, &here, "accounts");
    let (accounts, error) = match api.list_accounts().await {
        Ok(list) => {
            // Online status is a second call; the list stands without it.
            let online = api.online_accounts().await.unwrap_or_default();
            let rows = list
                .into_iter()
                .map(|k| {
                    let on = online.iter().find(|o| o.kf_account == k.kf_account);
                    AccountRow {
                        online: match on.map(|o| o.status) {
                            Some(0) | None => "离线".into(),
                            Some(_) => "在线".into(),
                        },
                        sessions: on
                            .map(|o| o.accepted_case.to_string())
                            .unwrap_or_else(|| "-".into()),
                        account: k.kf_account,
                        nickname: k.kf_nick,
                        wechat: k.kf_wx.unwrap_or_default(),
                        invite: k.invite_wx.unwrap_or_default(),
                    }
                })
                .collect();
            (rows, String::new())
        }
        Err(e) => (Vec::new(), format!("读取客服账号失败：{}", explain(&e))),
    };
    html(&AccountsPage { chrome, accounts, error })
}

pub(super) async fn account_action(
    req: HttpRequest,
    here: Here,
    path: web::Path<String>,
    state: web::Data<Arc<ConsoleState>>,
    api: web::Data<ApiClient>,
    account: web::Data<AccountChoice>,
    form: Form,
) -> HttpResponse {
    let s = match post_session(&state, &req, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let field = |k: &str| form.get(k).map(|s| s.trim()).unwrap_or("");
    let back = &here.url("/console/accounts");
    let kf = match KfAccount::parse_with(field("kf_account"), Some(&account.account_id)) {
        Ok(k) => k,
        Err(e) => return back_with(&state, &s, back, false, format!("客服账号不正确：{e}")),
    };
    let (done, result) = match path.as_str() {
        "add" => ("已添加", api.add_account(&kf, field("nickname")).await),
        "update" => ("昵称已修改", api.update_account(&kf, field("nickname")).await),
        "invite" => ("已发出绑定邀请", api.invite_worker(&kf, field("invite_wx")).await),
        "delete" => ("已删除", api.delete_account(&kf).await),
        _ => return not_found(),
    };
    match result {
        Ok(()) => back_with(&state, &s, back, true, format!("{done}：{kf}")),
        Err(e) => back_with(&state, &s, back, false, format!("{kf}：{}", explain(&e))),
    }
}

// ---- rules ---------------------------------------------------------------------------------

struct RuleRow {
    name: String,
    origin: String,
    priority: i64,
    hits: u64,
}

#[derive(Template)]
#[template(path = "console/rules.html")]
struct RulesPage {
    chrome: Chrome,
    rules: Vec<RuleRow>,
    last_ok: bool,
    loaded_at: String,
    reloads: u64,
    failures: u64,
    errors: Vec<String>,
    dir: String,
}

pub(super) async fn rules(
    SignedIn(s, here): SignedIn,
    rules: web::Data<Arc<Rules>>,
    metrics: web::Data<Arc<Metrics>>,
) -> HttpResponse {
    let set = rules.current();
    let dir = format!("{}/", set.dir().display());
    let rows = set
        .outline()
        .into_iter()
        .map(|(name, origin, priority)| {
            // Files named as in the rules directory, like `kefu rules check` names them.
            let origin = origin.strip_prefix(dir.as_str()).map_or(origin.clone(), str::to_string);
            let hits =
                metrics.rule_hits.get_or_create(&RuleLabels { rule: label_value(&name) }).get();
            RuleRow { name, origin, priority, hits }
        })
        .collect();
    let st = rules.status();
    let loaded_ms = st
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    html(&RulesPage {
        chrome: Chrome::new(&s, &here, "rules"),
        rules: rows,
        last_ok: st.last_ok,
        loaded_at: fmt_ms(loaded_ms),
        reloads: st.reloads,
        failures: st.failures,
        errors: st.last_errors,
        dir: set.dir().display().to_string(),
    })
}

pub(super) async fn reload(
    req: HttpRequest,
    here: Here,
    state: web::Data<Arc<ConsoleState>>,
    rules: web::Data<Arc<Rules>>,
    form: Form,
) -> HttpResponse {
    let s = match post_session(&state, &req, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let r = rules.get_ref().clone();
    let back = &here.url("/console/rules");
    match web::block(move || r.reload()).await {
        Ok(Ok(n)) => back_with(&state, &s, back, true, format!("已重新加载 {n} 条规则。")),
        Ok(Err(_)) => back_with(
            &state,
            &s,
            back,
            false,
            "规则没有重新加载，旧规则继续生效。错误见下方。".to_string(),
        ),
        Err(e) => back_with(&state, &s, back, false, format!("重新加载失败：{e}")),
    }
}

// ---- outbox --------------------------------------------------------------------------------

struct OutRow {
    openid: String,
    rule: String,
    text: String,
    when: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "console/outbox.html")]
struct OutboxPage {
    chrome: Chrome,
    pending: Vec<OutRow>,
    delayed: Vec<OutRow>,
    held: Vec<OutRow>,
    dropped: Vec<OutRow>,
    error: String,
}

fn out_row(e: &OutboxEntry) -> OutRow {
    OutRow {
        openid: e.openid.to_string(),
        rule: e.rule.clone(),
        text: match &e.action.action {
            OutboxAction::Send { message } => crate::convlog::message_text(message),
            OutboxAction::Typing => "[正在输入]".into(),
        },
        when: fmt_ms(e.due_at_ms),
        reason: e.reason.clone().unwrap_or_default(),
    }
}

pub(super) async fn outbox(
    SignedIn(s, here): SignedIn,
    store: web::Data<Arc<dyn Store>>,
    clock: web::Data<SharedClock>,
) -> HttpResponse {
    let now = clock.now_ms();
    let mut page = OutboxPage {
        chrome: Chrome::new(&s, &here, "outbox"),
        pending: Vec::new(),
        delayed: Vec::new(),
        held: Vec::new(),
        dropped: Vec::new(),
        error: String::new(),
    };
    match store.outbox_overview(50).await {
        Ok(entries) => {
            for e in &entries {
                let list = match e.status {
                    OutboxStatus::Pending if e.due_at_ms > now => &mut page.delayed,
                    OutboxStatus::Pending | OutboxStatus::InFlight => &mut page.pending,
                    OutboxStatus::Held => &mut page.held,
                    OutboxStatus::Dropped | OutboxStatus::Failed => &mut page.dropped,
                    OutboxStatus::Sent => continue,
                };
                list.push(out_row(e));
            }
        }
        Err(e) => page.error = format!("读取发件箱失败：{e}"),
    }
    html(&page)
}

// ---- live events ---------------------------------------------------------------------------

/// The live events of `/admin/events` for a signed-in page, ended as soon as its session ends
/// (signed out elsewhere, or idle): no record reaches a browser after its sign-out.
pub(super) async fn events(
    SignedIn(session, _): SignedIn,
    state: web::Data<Arc<ConsoleState>>,
    store: web::Data<Arc<dyn Store>>,
) -> HttpResponse {
    let state = state.get_ref().clone();
    crate::http::conversations::event_stream(store.log_bus()).map_body(move |_, body| {
        actix_web::body::BoxBody::new(WhileSignedIn { body, state, id: session.id })
    })
}

/// A response body that ends when the session `id` is no longer signed in (checked before
/// each chunk: every event, and the keep-alive comments in between).
struct WhileSignedIn {
    body: actix_web::body::BoxBody,
    state: Arc<ConsoleState>,
    id: String,
}

impl actix_web::body::MessageBody for WhileSignedIn {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        actix_web::body::BodySize::Stream
    }

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<web::Bytes, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.body).poll_next(cx) {
            Poll::Ready(Some(chunk)) if !this.state.is_live(&this.id) => {
                drop(chunk); // an event for a session that ended: not sent, and the end
                Poll::Ready(None)
            }
            other => other,
        }
    }
}
