//! The WeChat API client against `MockWechat`: the exact method, path, query and body of every
//! call (protocol §6–§8), the token policy (single flight, refresh once, compare-and-invalidate),
//! the retry policy, and the admin endpoints.

use std::sync::Arc;
use std::time::Duration;

use crate::mock_wechat::{MockResponse, MockWechat};
use kefu::api::{ApiClient, ApiError, ApiOptions, ErrorCode, RetryPolicy, SendBody, TokenSource};
use kefu::config::{Config, TokenEndpoint, WechatConfig};
use kefu::model::{
    Article, CachedToken, Clock, KfAccount, ManualClock, MemoryTokenCache, MenuItem, OpenId,
    OutMessage, Secret, SharedClock, SystemClock, TokenCache,
};
use serde_json::{Value, json};

/// A body the client accepts (checked once, as `kefu send` and `/admin/send` check theirs).
fn send_body(v: serde_json::Value) -> SendBody {
    SendBody::parse(v).expect("a valid custom/send body")
}

const SEND: &str = "/cgi-bin/message/custom/send";
const STABLE: &str = "/cgi-bin/stable_token";
const NOW_MS: i64 = 1_700_000_000_000;

fn wechat_cfg(mock: &MockWechat) -> WechatConfig {
    let mut c = Config::default().wechat;
    c.app_id = "wxAPPID0000000001".into();
    c.app_secret = Secret::new("APPSECRET_abcdef");
    c.api_base = mock.url();
    c
}

fn fast_opts() -> ApiOptions {
    ApiOptions {
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            ..RetryPolicy::default()
        },
        ..ApiOptions::default()
    }
}

struct Harness {
    mock: MockWechat,
    client: ApiClient,
    cache: Arc<MemoryTokenCache>,
    clock: Arc<ManualClock>,
}

fn harness_with(opts: ApiOptions, endpoint: TokenEndpoint) -> Harness {
    let mock = MockWechat::start();
    let mut cfg = wechat_cfg(&mock);
    cfg.token_endpoint = endpoint;
    let cache = Arc::new(MemoryTokenCache::default());
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let shared: SharedClock = clock.clone();
    let client = ApiClient::with_options(&cfg, cache.clone(), shared, opts).unwrap();
    Harness { mock, client, cache, clock }
}

fn harness() -> Harness {
    harness_with(fast_opts(), TokenEndpoint::Stable)
}

fn kf(s: &str) -> KfAccount {
    KfAccount::parse(s).unwrap()
}

fn oid(s: &str) -> OpenId {
    OpenId::parse(s).unwrap()
}

/// Asserts one recorded call: method, path, the full query, and the JSON body (None = empty).
fn assert_call(
    r: &crate::mock_wechat::RecordedRequest,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: Option<Value>,
) {
    assert_eq!(r.method, method, "method of {path}");
    assert_eq!(r.path, path);
    let want: std::collections::BTreeMap<String, String> =
        query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(r.query, want, "query of {path}");
    match body {
        Some(b) => {
            assert_eq!(r.json(), Some(b), "body of {path}: {}", r.body_text());
            assert!(
                r.header("content-type").is_some_and(|c| c.starts_with("application/json")),
                "{:?}",
                r.headers
            );
        }
        None => assert!(r.body.is_empty(), "{path} has a body: {}", r.body_text()),
    }
}

const T1: &[(&str, &str)] = &[("access_token", "MOCK_TOKEN_1")];

// ---------------------------------------------------------------------------------------------
// Access token

#[tokio::test]
async fn stable_token_is_fetched_once_with_the_documented_body() {
    let h = harness();
    let t = h.client.access_token().await.unwrap();
    assert_eq!(t.expose(), "MOCK_TOKEN_1");
    let reqs = h.mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_call(
        &reqs[0],
        "POST",
        STABLE,
        &[],
        Some(json!({"grant_type":"client_credential","appid":"wxAPPID0000000001",
                    "secret":"APPSECRET_abcdef","force_refresh":false})),
    );
    let s = h.client.token_status().await.unwrap();
    assert_eq!(s.source, TokenSource::Memory);
    assert_eq!(s.fetched_at, NOW_MS / 1000);
    assert_eq!(s.expires_at, NOW_MS / 1000 + 7200);
    assert_eq!(h.mock.token_fetches(), 1);
    // Saved to the shared cache for the next process.
    assert_eq!(h.cache.load().await.unwrap().unwrap().token.expose(), "MOCK_TOKEN_1");
}

#[tokio::test]
async fn classic_token_endpoint_is_a_get_with_query() {
    let h = harness_with(fast_opts(), TokenEndpoint::Classic);
    assert_eq!(h.client.access_token().await.unwrap().expose(), "MOCK_TOKEN_1");
    let r = &h.mock.requests()[0];
    assert_call(
        r,
        "GET",
        "/cgi-bin/token",
        &[
            ("grant_type", "client_credential"),
            ("appid", "wxAPPID0000000001"),
            ("secret", "APPSECRET_abcdef"),
        ],
        None,
    );
}

#[tokio::test]
async fn a_valid_stored_token_is_reused_without_a_fetch() {
    let h = harness();
    let now = NOW_MS / 1000;
    h.cache
        .save(&CachedToken {
            token: Secret::new("STORED"),
            expires_at: now + 3600,
            fetched_at: now - 3600,
        })
        .await
        .unwrap();
    let s = h.client.token_status().await.unwrap();
    assert_eq!((s.source, s.token.expose()), (TokenSource::Store, "STORED"));
    h.client
        .send(&send_body(json!({"touser":"oU1","msgtype":"text","text":{"content":"x"}})))
        .await
        .unwrap();
    assert_eq!(h.mock.token_fetches(), 0);
    assert_eq!(h.mock.requests_to(SEND)[0].query("access_token"), Some("STORED"));
}

#[tokio::test]
async fn token_is_refreshed_300s_before_expiry() {
    let h = harness();
    h.client.access_token().await.unwrap();
    h.clock.advance(Duration::from_secs(7200 - 301));
    assert_eq!(h.client.access_token().await.unwrap().expose(), "MOCK_TOKEN_1");
    h.clock.advance(Duration::from_secs(1));
    assert_eq!(h.client.access_token().await.unwrap().expose(), "MOCK_TOKEN_2");
    assert_eq!(h.mock.token_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_sends_fetch_one_token() {
    let h = harness();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let c = h.client.clone();
        tasks.push(tokio::spawn(async move {
            let body =
                json!({"touser": format!("oUser{i}"), "msgtype":"text","text":{"content":"hi"}});
            c.send(&send_body(body)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(h.mock.token_fetches(), 1);
    let sends = h.mock.requests_to(SEND);
    assert_eq!(sends.len(), 100);
    assert!(sends.iter().all(|r| r.query("access_token") == Some("MOCK_TOKEN_1")));
}

async fn refresh_once_on(code: i64) {
    let h = harness();
    h.mock.push_error(SEND, code, "token problem");
    h.client
        .send(&send_body(json!({"touser":"oU1","msgtype":"text","text":{"content":"x"}})))
        .await
        .unwrap();
    assert_eq!(h.mock.token_fetches(), 2, "one refresh for {code}");
    let sends = h.mock.requests_to(SEND);
    assert_eq!(sends.len(), 2, "one retry for {code}");
    assert_eq!(sends[0].query("access_token"), Some("MOCK_TOKEN_1"));
    assert_eq!(sends[1].query("access_token"), Some("MOCK_TOKEN_2"));
    assert_eq!(sends[0].body, sends[1].body);
}

#[tokio::test]
async fn errcode_40001_refreshes_once_and_retries_once() {
    refresh_once_on(40001).await;
}

#[tokio::test]
async fn errcode_42001_refreshes_once_and_retries_once() {
    refresh_once_on(42001).await;
}

#[tokio::test]
async fn errcode_40014_refreshes_once_and_retries_once() {
    refresh_once_on(40014).await;
}

#[tokio::test]
async fn a_second_token_error_is_returned_not_looped() {
    let h = harness();
    h.mock.set_default(SEND, MockResponse::error(40001, "invalid credential"));
    let e = h
        .client
        .send(&send_body(json!({"touser":"oU1","msgtype":"text","text":{}})))
        .await
        .unwrap_err();
    assert_eq!(e.errcode(), Some(40001));
    assert_eq!(h.mock.count(SEND), 2);
    assert_eq!(h.mock.token_fetches(), 2);
}

#[tokio::test]
async fn invalidation_compares_before_discarding() {
    let h = harness();
    let fresh = h.client.access_token().await.unwrap();
    // A late 40001 for some older token must not discard the current one.
    h.client.invalidate_token(&Secret::new("OLDER_TOKEN")).await;
    assert_eq!(h.client.token_status().await.unwrap().source, TokenSource::Memory);
    assert_eq!(h.cache.load().await.unwrap().unwrap().token, fresh);
    h.client.invalidate_token(&fresh).await;
    assert!(h.cache.load().await.unwrap().is_none());
    assert_eq!(h.client.token_status().await.unwrap().source, TokenSource::Fetched);
    assert_eq!(h.mock.token_fetches(), 2);
}

/// A shared cache whose refresh lock another process holds.
#[derive(Default)]
struct LockedElsewhere {
    inner: MemoryTokenCache,
    lock_attempts: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl TokenCache for LockedElsewhere {
    async fn load(&self) -> anyhow::Result<Option<CachedToken>> {
        self.inner.load().await
    }
    async fn save(&self, t: &CachedToken) -> anyhow::Result<()> {
        self.inner.save(t).await
    }
    async fn invalidate(&self, t: &str) -> anyhow::Result<()> {
        self.inner.invalidate(t).await
    }
    async fn try_lock_refresh(&self, _h: &str, _ttl: Duration) -> anyhow::Result<bool> {
        self.lock_attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(false)
    }
}

#[tokio::test]
async fn waits_for_the_process_holding_the_refresh_lock() {
    let mock = MockWechat::start();
    let cache = Arc::new(LockedElsewhere::default());
    let c = ApiClient::with_options(
        &wechat_cfg(&mock),
        cache.clone(),
        Arc::new(SystemClock),
        fast_opts(),
    )
    .unwrap();
    let other = cache.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = SystemClock.now_secs();
        let t = CachedToken {
            token: Secret::new("FROM_OTHER"),
            expires_at: now + 7200,
            fetched_at: now,
        };
        other.save(&t).await.unwrap();
    });
    let s = c.token_status().await.unwrap();
    assert_eq!((s.source, s.token.expose()), (TokenSource::Store, "FROM_OTHER"));
    assert_eq!(mock.token_fetches(), 0);
    assert!(cache.lock_attempts.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn a_dead_lock_holder_delays_but_does_not_block_the_fetch() {
    let mock = MockWechat::start();
    let opts = ApiOptions { lock_wait: Duration::from_millis(300), ..fast_opts() };
    let c = ApiClient::with_options(
        &wechat_cfg(&mock),
        Arc::new(LockedElsewhere::default()),
        Arc::new(SystemClock),
        opts,
    )
    .unwrap();
    assert_eq!(c.access_token().await.unwrap().expose(), "MOCK_TOKEN_1");
    assert_eq!(mock.token_fetches(), 1);
}

#[tokio::test]
async fn token_fetch_errors_are_not_token_retries() {
    let h = harness();
    h.mock.push_error(STABLE, 40164, "invalid ip 10.0.0.1 ipv6 ::ffff:10.0.0.1, not in whitelist");
    let e = h
        .client
        .send(&send_body(json!({"touser":"oU1","msgtype":"text","text":{}})))
        .await
        .unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::IpNotWhitelisted));
    assert!(e.to_string().contains("add this machine's egress IP to the API IP whitelist"));
    assert_eq!(h.mock.count(SEND), 0);
    assert_eq!(h.mock.token_fetches(), 1);
}

#[tokio::test]
async fn token_fetch_busy_is_retried() {
    let h = harness();
    h.mock.push_error(STABLE, -1, "system error");
    assert_eq!(h.client.access_token().await.unwrap().expose(), "MOCK_TOKEN_1");
    assert_eq!(h.mock.token_fetches(), 2);
}

#[tokio::test]
async fn no_credentials_is_its_own_error() {
    let mock = MockWechat::start();
    let mut cfg = wechat_cfg(&mock);
    cfg.app_id.clear();
    cfg.app_secret = Secret::default();
    let c =
        ApiClient::new(&cfg, Arc::new(MemoryTokenCache::default()), Arc::new(SystemClock)).unwrap();
    let e = c.access_token().await.unwrap_err();
    assert_eq!(e, ApiError::NoCredentials);
    assert!(e.to_string().contains("KEFU_WECHAT_APP_ID"));
    assert!(mock.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Send retry policy

#[tokio::test]
async fn busy_then_success_is_retried() {
    let h = harness();
    h.mock.push_error(SEND, -1, "system error");
    h.client
        .send(&send_body(json!({"touser":"oU1","msgtype":"text","text":{"content":"x"}})))
        .await
        .unwrap();
    assert_eq!(h.mock.count(SEND), 2);
}

#[tokio::test]
async fn minute_quota_is_retried_but_bounded() {
    let h = harness();
    h.mock.set_default(SEND, MockResponse::error(45011, "api minute-quota reach limit"));
    let e = h
        .client
        .send(&send_body(json!({"touser":"oU1","msgtype":"text","text":{}})))
        .await
        .unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::MinuteQuotaReached));
    assert_eq!(h.mock.count(SEND), 3, "max_attempts = 3");
}

#[tokio::test]
async fn a_timeout_after_sending_is_not_retried() {
    let opts = ApiOptions { request_timeout: Duration::from_millis(300), ..fast_opts() };
    let h = harness_with(opts, TokenEndpoint::Stable);
    h.client.access_token().await.unwrap();
    h.mock.push(SEND, MockResponse::ok().delayed(Duration::from_millis(1500)));
    let e = h
        .client
        .send(&send_body(json!({"touser":"oU1","msgtype":"text","text":{}})))
        .await
        .unwrap_err();
    assert!(e.is_ambiguous() && !e.is_retriable(), "{e:?}");
    assert!(matches!(e, ApiError::Ambiguous { .. }), "{e:?}");
    assert!(e.to_string().contains("may have reached WeChat"), "{e}");
    // Give a (wrong) retry every chance to arrive before counting.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(h.mock.count(SEND), 1);
}

#[tokio::test]
async fn a_timed_out_read_is_retried() {
    let opts = ApiOptions { request_timeout: Duration::from_millis(300), ..fast_opts() };
    let h = harness_with(opts, TokenEndpoint::Stable);
    h.mock.push(
        "/cgi-bin/customservice/getkflist",
        MockResponse::ok().delayed(Duration::from_secs(1)),
    );
    assert!(h.client.list_accounts().await.unwrap().is_empty());
    assert_eq!(h.mock.count("/cgi-bin/customservice/getkflist"), 2);
}

#[tokio::test]
async fn connection_refused_is_not_sent_and_retriable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = Config::default().wechat;
    cfg.app_id = "wxAPPID0000000001".into();
    cfg.app_secret = Secret::new("APPSECRET_abcdef");
    cfg.api_base = format!("http://127.0.0.1:{port}");
    let c = ApiClient::with_options(
        &cfg,
        Arc::new(MemoryTokenCache::default()),
        Arc::new(SystemClock),
        fast_opts(),
    )
    .unwrap();
    let e = c.access_token().await.unwrap_err();
    assert!(matches!(e, ApiError::NotSent { .. }) && e.is_retriable(), "{e:?}");
    let text = e.to_string();
    assert!(text.starts_with("could not reach WeChat for /cgi-bin/stable_token"), "{text}");
    assert!(!text.contains("APPSECRET"), "{text}");
}

#[tokio::test]
async fn window_errors_are_typed_and_not_retried() {
    let h = harness();
    h.mock.push_error(SEND, 45015, "response out of time limit or subscription is canceled");
    h.mock.push_error(SEND, 45047, "out of response count limit");
    let body = send_body(json!({"touser":"oU1","msgtype":"text","text":{"content":"x"}}));
    let e1 = h.client.send(&body).await.unwrap_err();
    let e2 = h.client.send(&body).await.unwrap_err();
    assert_eq!(e1.error_code(), Some(ErrorCode::OutsideWindow));
    assert_eq!(e2.error_code(), Some(ErrorCode::ResponseCountLimit));
    assert!(e1.is_window_error() && e2.is_window_error());
    assert_eq!(
        e1,
        ApiError::Api {
            code: 45015,
            errmsg: "response out of time limit or subscription is canceled".into()
        }
    );
    assert_eq!(h.mock.count(SEND), 2);
}

#[tokio::test]
async fn errors_never_carry_the_token_or_secret() {
    let opts = ApiOptions { request_timeout: Duration::from_millis(200), ..fast_opts() };
    let h = harness_with(opts, TokenEndpoint::Classic);
    h.mock.push(SEND, MockResponse::ok().delayed(Duration::from_millis(800)));
    h.mock.push(SEND, MockResponse::status(502));
    let body = send_body(json!({"touser":"oU1","msgtype":"text","text":{}}));
    for e in [h.client.send(&body).await.unwrap_err(), h.client.send(&body).await.unwrap_err()] {
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains("MOCK_TOKEN") && !text.contains("APPSECRET"), "{text}");
        }
    }
    assert!(!format!("{:?}", h.client).contains("APPSECRET"));
}

// ---------------------------------------------------------------------------------------------
// Exact bodies: custom/send and typing (protocol §6)

#[tokio::test]
async fn every_msgtype_goes_out_exactly_as_built() {
    let h = harness();
    let a = Article {
        title: "标题".into(),
        description: "d".into(),
        url: "https://e.x/1".into(),
        picurl: "https://e.x/p.jpg".into(),
    };
    let msgs = vec![
        OutMessage::Text { content: "您好 <a href=\"https://e.x\">帮助</a>".into() },
        OutMessage::Image { media_id: "IMG".into() },
        OutMessage::Voice { media_id: "VOICE".into() },
        OutMessage::Video {
            media_id: "V".into(),
            thumb_media_id: "T".into(),
            title: "t".into(),
            description: "d".into(),
        },
        OutMessage::Music {
            title: "t".into(),
            description: "d".into(),
            musicurl: "http://m".into(),
            hqmusicurl: "http://hq".into(),
            thumb_media_id: "T".into(),
        },
        OutMessage::News { articles: vec![a] },
        OutMessage::MpNews { media_id: "MP".into() },
        OutMessage::MpNewsArticle { article_id: "ART".into() },
        OutMessage::MsgMenu {
            head_content: "满意吗".into(),
            list: vec![MenuItem { id: "101".into(), content: "满意".into() }],
            tail_content: "谢谢".into(),
        },
        OutMessage::WxCard { card_id: "CARD".into() },
        OutMessage::MiniProgramPage {
            title: "订单".into(),
            appid: "wx0000000000000000".into(),
            pagepath: "pages/order?id=42".into(),
            thumb_media_id: "T".into(),
        },
    ];
    let to = oid("oUpF8uMEb4qRXf22hE3X68TekukE");
    for m in &msgs {
        h.client.send_message(&to, m, Some("bot01@gh_account")).await.unwrap();
    }
    let sends = h.mock.requests_to(SEND);
    assert_eq!(sends.len(), msgs.len());
    for (m, r) in msgs.iter().zip(&sends) {
        let want = m.custom_send_body(to.as_str(), Some("bot01@gh_account"));
        assert_eq!(want["customservice"]["kf_account"], "bot01@gh_account");
        assert_call(r, "POST", SEND, T1, Some(want));
        assert!(!r.body_text().contains("\\u"), "raw UTF-8 only (40033): {}", r.body_text());
    }
    assert!(sends[0].body_text().contains("您好"));
    assert_eq!(
        sends[8].json().unwrap()["msgmenu"]["list"][0],
        json!({"id":"101","content":"满意"})
    );
}

#[tokio::test]
async fn invalid_send_bodies_never_leave() {
    let h = harness();
    let e = SendBody::parse(json!({"touser":"o U","msgtype":"text","text":{}})).unwrap_err();
    assert!(matches!(e, ApiError::Invalid(_)), "{e:?}");
    assert!(h.mock.requests().is_empty());
}

#[tokio::test]
async fn typing_on_and_off() {
    let h = harness();
    h.client.typing("oU1", true).await.unwrap();
    h.client.typing("oU1", false).await.unwrap();
    let r = h.mock.requests_to("/cgi-bin/message/custom/typing");
    assert_call(
        &r[0],
        "POST",
        "/cgi-bin/message/custom/typing",
        T1,
        Some(json!({"touser":"oU1","command":"Typing"})),
    );
    assert_call(
        &r[1],
        "POST",
        "/cgi-bin/message/custom/typing",
        T1,
        Some(json!({"touser":"oU1","command":"CancelTyping"})),
    );
}

// ---------------------------------------------------------------------------------------------
// kf accounts (protocol §7.2, §7.3)

#[tokio::test]
async fn account_list_and_online_list() {
    let h = harness();
    h.mock.push_json(
        "/cgi-bin/customservice/getkflist",
        json!({"kf_list":[
            {"kf_account":"kf01@gh_test","kf_nick":"小王","kf_id":"1001","kf_headimgurl":"http://h/1",
             "kf_wx":"wang_wx"},
            {"kf_account":"kf02@gh_test","kf_nick":"小李","kf_id":1002,"kf_headimgurl":"",
             "invite_wx":"li_wx","invite_expire_time":1700100000,"invite_status":"waiting"}]}),
    );
    h.mock.push_json(
        "/cgi-bin/customservice/getonlinekflist",
        json!({"kf_online_list":[{"kf_account":"kf01@gh_test","status":1,"kf_id":"1001","accepted_case":2}]}),
    );
    let list = h.client.list_accounts().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!((list[0].kf_nick.as_str(), list[0].kf_wx.as_deref()), ("小王", Some("wang_wx")));
    assert_eq!(
        (list[1].kf_id.as_str(), list[1].invite_status.as_deref()),
        ("1002", Some("waiting"))
    );
    let online = h.client.online_accounts().await.unwrap();
    assert_eq!((online[0].status, online[0].accepted_case), (1, 2));
    let r = h.mock.requests();
    assert_call(&r[1], "GET", "/cgi-bin/customservice/getkflist", T1, None);
    assert_call(&r[2], "GET", "/cgi-bin/customservice/getonlinekflist", T1, None);
}

#[tokio::test]
async fn account_add_update_invite_exact_bodies() {
    let h = harness();
    let k = kf("kf01@gh_test");
    h.client.add_account(&k, "客服小王").await.unwrap();
    h.client.update_account(&k, "小王").await.unwrap();
    h.client.invite_worker(&k, "wang_wx").await.unwrap();
    let r = h.mock.requests();
    assert_call(
        &r[1],
        "POST",
        "/customservice/kfaccount/add",
        T1,
        Some(json!({"kf_account":"kf01@gh_test","nickname":"客服小王"})),
    );
    assert_call(
        &r[2],
        "POST",
        "/customservice/kfaccount/update",
        T1,
        Some(json!({"kf_account":"kf01@gh_test","nickname":"小王"})),
    );
    assert_call(
        &r[3],
        "POST",
        "/customservice/kfaccount/inviteworker",
        T1,
        Some(json!({"kf_account":"kf01@gh_test","invite_wx":"wang_wx"})),
    );
    assert!(h.client.add_account(&k, &"长".repeat(17)).await.is_err());
    assert_eq!(h.mock.requests().len(), 4);
}

#[tokio::test]
async fn delete_posts_json_first() {
    let h = harness();
    h.client.delete_account(&kf("kf01@gh_test")).await.unwrap();
    let r = h.mock.requests_to("/customservice/kfaccount/del");
    assert_eq!(r.len(), 1);
    assert_call(
        &r[0],
        "POST",
        "/customservice/kfaccount/del",
        T1,
        Some(json!({"kf_account":"kf01@gh_test"})),
    );
}

#[tokio::test]
async fn delete_falls_back_to_get_only_when_post_is_unknown() {
    for refusal in [
        MockResponse::status(404),
        MockResponse::status(405),
        MockResponse::error(43001, "require GET method"),
    ] {
        let h = harness();
        h.mock.push("/customservice/kfaccount/del", refusal);
        h.client.delete_account(&kf("kf01@gh_test")).await.unwrap();
        let r = h.mock.requests_to("/customservice/kfaccount/del");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].method, "POST");
        assert_call(
            &r[1],
            "GET",
            "/customservice/kfaccount/del",
            &[("access_token", "MOCK_TOKEN_1"), ("kf_account", "kf01@gh_test")],
            None,
        );
    }
    // Any other refusal is the answer.
    let h = harness();
    h.mock.push_error("/customservice/kfaccount/del", 65401, "invalid kf_account");
    let e = h.client.delete_account(&kf("kf01@gh_test")).await.unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::KfInvalidAccount));
    assert_eq!(h.mock.count("/customservice/kfaccount/del"), 1);
}

#[tokio::test]
async fn avatar_is_a_multipart_media_field() {
    let h = harness();
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0];
    jpeg.extend_from_slice(b"fake-jpeg-body");
    h.client.upload_avatar(&kf("kf01@gh_test"), &jpeg, "wang.jpg").await.unwrap();
    let r = &h.mock.requests_to("/customservice/kfaccount/uploadheadimg")[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.query,
        [("access_token", "MOCK_TOKEN_1"), ("kf_account", "kf01@gh_test")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    );
    assert!(r.header("content-type").unwrap().starts_with("multipart/form-data; boundary="));
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("Content-Disposition: form-data; name=\"media\"; filename=\"wang.jpg\""),
        "{body}"
    );
    assert!(body.contains("Content-Type: image/jpeg"), "{body}");
    assert!(r.body.windows(jpeg.len()).any(|w| w == jpeg.as_slice()));
    let e = h.client.upload_avatar(&kf("kf01@gh_test"), b"GIF89a", "x.gif").await.unwrap_err();
    assert!(e.to_string().contains("not a JPEG or PNG"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// kf sessions and records

#[tokio::test]
async fn session_calls_exact() {
    let h = harness();
    let (k, o) = (kf("kf01@gh_test"), oid("oUser1"));
    h.client.create_session(&k, &o).await.unwrap();
    h.client.close_session(&k, &o).await.unwrap();
    h.mock.push_json(
        "/customservice/kfsession/getsession",
        json!({"kf_account":"kf01@gh_test","createtime":123456789}),
    );
    let s = h.client.get_session(&o).await.unwrap();
    assert_eq!((s.kf_account.as_str(), s.createtime), ("kf01@gh_test", 123456789));
    h.mock.push_json(
        "/customservice/kfsession/getsessionlist",
        json!({"sessionlist":[{"openid":"oUser1","createtime":123456789}]}),
    );
    assert_eq!(h.client.list_sessions(&k).await.unwrap()[0].openid, "oUser1");
    h.mock.push_json(
        "/customservice/kfsession/getwaitcase",
        json!({"count":150,"waitcaselist":[{"latest_time":123456789,"openid":"oUser2"}]}),
    );
    let w = h.client.waiting().await.unwrap();
    assert_eq!((w.count, w.waitcaselist[0].openid.as_str()), (150, "oUser2"));
    let r = h.mock.requests();
    let pair = json!({"kf_account":"kf01@gh_test","openid":"oUser1"});
    assert_call(&r[1], "POST", "/customservice/kfsession/create", T1, Some(pair.clone()));
    assert_call(&r[2], "POST", "/customservice/kfsession/close", T1, Some(pair));
    assert_call(
        &r[3],
        "GET",
        "/customservice/kfsession/getsession",
        &[("access_token", "MOCK_TOKEN_1"), ("openid", "oUser1")],
        None,
    );
    assert_call(
        &r[4],
        "GET",
        "/customservice/kfsession/getsessionlist",
        &[("access_token", "MOCK_TOKEN_1"), ("kf_account", "kf01@gh_test")],
        None,
    );
    assert_call(&r[5], "GET", "/customservice/kfsession/getwaitcase", T1, None);
}

#[tokio::test]
async fn records_page_to_the_end() {
    let h = harness();
    let rec = |i: i64| json!({"openid":"oU","opercode":2002,"text":format!("m{i}"),"time":1700000000 + i,"worker":"kf01@gh"});
    let full: Vec<Value> = (0..10_000).map(rec).collect();
    h.mock.push_json(
        "/customservice/msgrecord/getmsglist",
        json!({"recordlist": full, "number": 10000, "msgid": 20011}),
    );
    h.mock.push_json(
        "/customservice/msgrecord/getmsglist",
        json!({"recordlist": [rec(10_000), rec(10_001)], "number": 2, "msgid": 20013}),
    );
    let got = h.client.records(1_700_000_000, 1_700_003_600).await.unwrap();
    assert_eq!(got.len(), 10_002);
    assert_eq!(got[10_001].text, "m10001");
    let r = h.mock.requests_to("/customservice/msgrecord/getmsglist");
    assert_eq!(r.len(), 2);
    assert_call(
        &r[0],
        "POST",
        "/customservice/msgrecord/getmsglist",
        T1,
        Some(json!({"starttime":1700000000,"endtime":1700003600,"msgid":1,"number":10000})),
    );
    assert_call(
        &r[1],
        "POST",
        "/customservice/msgrecord/getmsglist",
        T1,
        Some(json!({"starttime":1700000000,"endtime":1700003600,"msgid":20011,"number":10000})),
    );
}

#[tokio::test]
async fn records_split_spans_over_24h() {
    let h = harness();
    let start = 1_700_000_000;
    h.client.records(start, start + 2 * 86400).await.unwrap();
    let bodies: Vec<(i64, i64)> = h
        .mock
        .requests_to("/customservice/msgrecord/getmsglist")
        .iter()
        .map(|r| {
            let v = r.json().unwrap();
            (v["starttime"].as_i64().unwrap(), v["endtime"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        bodies,
        vec![
            (start, start + 86399),
            (start + 86400, start + 2 * 86400 - 1),
            (start + 2 * 86400, start + 2 * 86400)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Admin endpoints (interface §3)

mod admin {
    use super::*;
    use actix_web::{App, test, web};
    use kefu::http::admin::{AdminAuth, configure};

    const ADMIN: &str = "admin-token-0123456789";

    macro_rules! app {
        ($client:expr, $token:expr) => {
            test::init_service(
                App::new()
                    .app_data(web::Data::new($client.clone()))
                    .app_data(web::Data::new(test_store()))
                    .app_data(web::Data::new(
                        std::sync::Arc::new(kefu::model::SystemClock) as kefu::model::SharedClock
                    ))
                    .app_data(web::Data::new(
                        AdminAuth::new(Secret::new($token)).with_account_id("gh_test"),
                    ))
                    .configure(configure),
            )
            .await
        };
    }

    /// A throwaway ledger for the window gate of `/admin/send` (no follower has a window).
    fn test_store() -> std::sync::Arc<dyn kefu::store::Store> {
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        std::sync::Arc::new(
            kefu::store::SqliteStore::open(
                dir.path(),
                &kefu::config::WindowConfig::default(),
                660,
                kefu::config::SyncMode::Off,
                std::sync::Arc::new(kefu::model::SystemClock),
            )
            .unwrap(),
        )
    }

    fn authed(req: test::TestRequest) -> test::TestRequest {
        req.insert_header(("Authorization", format!("Bearer {ADMIN}")))
    }

    #[actix_web::test]
    async fn off_without_a_token_and_401_without_the_right_one() {
        let h = harness();
        let app = app!(h.client, "");
        let resp = test::call_service(
            &app,
            authed(test::TestRequest::get().uri("/admin/kf/accounts")).to_request(),
        )
        .await;
        assert_eq!(resp.status(), 404);

        let app = app!(h.client, ADMIN);
        for auth in [None, Some("Bearer wrong-token-0123456789"), Some(ADMIN)] {
            let mut req = test::TestRequest::get().uri("/admin/kf/accounts");
            if let Some(a) = auth {
                req = req.insert_header(("Authorization", a));
            }
            let resp = test::call_service(&app, req.to_request()).await;
            assert_eq!(resp.status(), 401, "{auth:?}");
            assert_eq!(resp.headers().get("www-authenticate").unwrap(), "Bearer");
        }
        assert!(h.mock.requests().is_empty());
    }

    #[actix_web::test]
    async fn list_add_invite_delete() {
        let h = harness();
        h.mock.push_json("/cgi-bin/customservice/getkflist",
            json!({"kf_list":[{"kf_account":"kf01@gh_test","kf_nick":"小王","kf_id":1001,"kf_headimgurl":""}]}));
        let app = app!(h.client, ADMIN);

        let v: Value = test::call_and_read_body_json(
            &app,
            authed(test::TestRequest::get().uri("/admin/kf/accounts")).to_request(),
        )
        .await;
        assert_eq!(
            v,
            json!({"kf_list":[{"kf_account":"kf01@gh_test","kf_nick":"小王","kf_id":"1001","kf_headimgurl":""}]})
        );

        let req = authed(test::TestRequest::post().uri("/admin/kf/accounts"))
            .set_json(json!({"kf_account":"kf02","nickname":"小李"}));
        let v: Value = test::call_and_read_body_json(&app, req.to_request()).await;
        assert_eq!(v, json!({"errcode":0,"errmsg":"ok","kf_account":"kf02@gh_test"}));

        let req = authed(test::TestRequest::post().uri("/admin/kf/accounts/kf02%40gh_test/invite"))
            .set_json(json!({"invite_wx":"li_wx"}));
        let resp = test::call_service(&app, req.to_request()).await;
        assert_eq!(resp.status(), 200);

        let req = authed(test::TestRequest::delete().uri("/admin/kf/accounts/kf02@gh_test"));
        let resp = test::call_service(&app, req.to_request()).await;
        assert_eq!(resp.status(), 200);

        let r = h.mock.requests();
        assert_call(
            &r[2],
            "POST",
            "/customservice/kfaccount/add",
            T1,
            Some(json!({"kf_account":"kf02@gh_test","nickname":"小李"})),
        );
        assert_call(
            &r[3],
            "POST",
            "/customservice/kfaccount/inviteworker",
            T1,
            Some(json!({"kf_account":"kf02@gh_test","invite_wx":"li_wx"})),
        );
        assert_call(
            &r[4],
            "POST",
            "/customservice/kfaccount/del",
            T1,
            Some(json!({"kf_account":"kf02@gh_test"})),
        );
    }

    #[actix_web::test]
    async fn bad_input_is_400_and_never_sent() {
        let h = harness();
        let app = app!(h.client, ADMIN);
        for (uri, body) in [
            ("/admin/kf/accounts", "not json"),
            ("/admin/kf/accounts", r#"{"kf_account":"bad prefix!","nickname":"x"}"#),
            ("/admin/kf/accounts", r#"{"kf_account":"kf01"}"#),
            ("/admin/send", r#"{"touser":"oU1","msgtype":"text"}"#),
            ("/admin/send", "[]"),
        ] {
            let req = authed(test::TestRequest::post().uri(uri))
                .insert_header(("content-type", "application/json"))
                .set_payload(body);
            let resp = test::call_service(&app, req.to_request()).await;
            assert_eq!(resp.status(), 400, "{uri} {body}");
            let v: Value = test::read_body_json(resp).await;
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        }
        assert!(h.mock.requests().is_empty());
    }

    #[actix_web::test]
    async fn send_passes_the_body_and_maps_wechat_errors() {
        let h = harness();
        let app = app!(h.client, ADMIN);
        let body = json!({"touser":"oU1","msgtype":"text","text":{"content":"您好"},
                          "customservice":{"kf_account":"kf01@gh_test"}});
        // No window: the gate refuses, and nothing reaches WeChat.
        let req = authed(test::TestRequest::post().uri("/admin/send")).set_json(body.clone());
        let resp = test::call_service(&app, req.to_request()).await;
        assert_eq!(resp.status(), 409);
        let v: Value = test::read_body_json(resp).await;
        assert!(v["error"].as_str().unwrap().starts_with("not sent: the follower's"), "{v}");
        assert!(h.mock.requests_to(SEND).is_empty());

        let req =
            authed(test::TestRequest::post().uri("/admin/send?force=true")).set_json(body.clone());
        let v: Value = test::call_and_read_body_json(&app, req.to_request()).await;
        assert_eq!(
            v,
            json!({"errcode":0,"errmsg":"ok","touser":"oU1","charged":null,"dry_run":false})
        );
        assert_call(&h.mock.requests_to(SEND)[0], "POST", SEND, T1, Some(body.clone()));

        h.mock.push_error(SEND, 45015, "response out of time limit or subscription is canceled");
        let req = authed(test::TestRequest::post().uri("/admin/send?force=true")).set_json(body);
        let resp = test::call_service(&app, req.to_request()).await;
        assert_eq!(resp.status(), 502);
        let v: Value = test::read_body_json(resp).await;
        assert_eq!(v["errcode"], 45015);
        assert_eq!(v["errmsg"], "response out of time limit or subscription is canceled");
        assert_eq!(v["meaning"], ErrorCode::OutsideWindow.meaning());
        assert_eq!(v["remedy"], ErrorCode::OutsideWindow.remedy());
        assert!(v["error"].as_str().unwrap().starts_with("WeChat API errcode 45015"));
    }
}
