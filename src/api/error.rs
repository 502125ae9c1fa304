//! The WeChat API error table (protocol §4.5, §6.3, §7.5, §8.3) and [`ApiError`], the one error
//! every outbound call returns. Its `Display` is the sentence an operator reads: the errcode,
//! what it means and what to do about it. Nothing here ever holds the access token or the app
//! secret: transport errors keep only the path, never the URL (whose query carries the token).

use std::fmt;

/// Declares the typed code table once: variant, number, meaning, remedy.
macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $code:literal => ($meaning:literal, $remedy:literal), )*) => {
        /// A WeChat `errcode`, named. Codes not in the table keep their number in `Unknown`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name, )*
            /// A code kefu has no entry for; the errmsg is then the only explanation.
            Unknown(i64),
        }

        impl ErrorCode {
            pub fn from_code(code: i64) -> ErrorCode {
                match code {
                    $( $code => ErrorCode::$name, )*
                    other => ErrorCode::Unknown(other),
                }
            }

            pub fn code(self) -> i64 {
                match self {
                    $( ErrorCode::$name => $code, )*
                    ErrorCode::Unknown(c) => c,
                }
            }

            /// What the code means, in a few words.
            pub fn meaning(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $meaning, )*
                    ErrorCode::Unknown(_) => "an error code kefu does not know",
                }
            }

            /// What the operator should do.
            pub fn remedy(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $remedy, )*
                    ErrorCode::Unknown(_) => {
                        "look the code up in the WeChat Official Account error-code list; \
                         WeChat's errmsg, when given, explains it"
                    }
                }
            }

            /// Every named code (table-driven tests, docs).
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$name, )* ];
        }
    };
}

error_codes! {
    // §8.3: access token and platform
    SystemBusy = -1 => ("WeChat is busy",
        "nothing to change: kefu retries with backoff; if it persists, try again in a minute"),
    InvalidCredential = 40001 => (
        "the AppSecret is wrong, or the access token is invalid or no longer the latest",
        "if this came from fetching the token, check wechat.app_secret; otherwise another program \
         fetched a new token for this app: let only kefu fetch it, or share kefu's store"),
    InvalidGrantType = 40002 => ("invalid grant_type",
        "this is a kefu bug: report it with the command that failed"),
    InvalidOpenId = 40003 => ("the OpenID is invalid or belongs to another Official Account",
        "check the OpenID: it must come from a push to this same account"),
    InvalidAppId = 40013 => ("the AppID is invalid",
        "check wechat.app_id (KEFU_WECHAT_APP_ID) against the MP admin's developer settings"),
    InvalidAccessToken = 40014 => ("the access token is invalid",
        "kefu refreshes it once by itself; if this persists, check that no other program \
         fetches tokens for this app"),
    InvalidMediaType = 40004 => ("the media type is invalid",
        "upload as image, voice, video or thumb; this is a kefu bug if kefu chose the type"),
    InvalidFileType = 40005 => ("the file type is not accepted for this media type",
        "convert the file (image: bmp/png/jpeg/gif, voice: amr/mp3, video: mp4, thumb: jpg); \
         `kefu rules check` checks the files named in rules"),
    InvalidFileSize = 40006 => ("the file size is invalid",
        "keep files within WeChat's limits: image and video 10 MB, voice 2 MB, thumb 64 KB"),
    InvalidMediaId = 40007 => ("the media_id is invalid or has expired (temporary media lives 3 days)",
        "for a file named in a rule kefu uploads it again and retries once; for a media id \
         written by hand, upload the file again (`kefu media upload FILE`) or name the file with \
         { file = \"…\" }"),
    InvalidCharacters = 40033 => ("the request contains \\uXXXX escapes",
        "send raw UTF-8 JSON: do not escape non-ASCII characters in the body"),
    InvalidAppSecret = 40125 => ("the AppSecret is invalid",
        "check wechat.app_secret (KEFU_WECHAT_APP_SECRET); reset it in the MP admin if unsure"),
    IpNotWhitelisted = 40164 => ("this machine's IP address is not in the API IP whitelist",
        "add this machine's egress IP to the API IP whitelist in the MP admin \
         (设置与开发 → 基本配置 → IP白名单), then try again"),
    AccessTokenMissing = 41001 => ("the access token is missing",
        "this is a kefu bug: report it with the command that failed"),
    AccessTokenExpired = 42001 => ("the access token has expired",
        "kefu refreshes it once by itself; if this persists, check this machine's clock"),
    RequireGet = 43001 => ("the endpoint requires GET",
        "this is a kefu bug or an API change: report it with the command that failed"),
    RequirePost = 43002 => ("the endpoint requires POST",
        "this is a kefu bug or an API change: report it with the command that failed"),
    // §4.5: custom/send
    RequireSubscribe = 43004 => ("the recipient does not follow the account",
        "nothing to retry: the follower must follow the account again"),
    ContentTooLong = 45002 => ("the content is too long",
        "shorten the message (keep text under about 2000 bytes) or split it"),
    TooManyArticles = 45008 => ("a news or mpnews message may carry only one article",
        "send one article per message"),
    DailyQuotaReached = 45009 => ("the daily API quota is used up",
        "wait until tomorrow, or reset the quota in the MP admin (certified accounts, 10 times \
         a month)"),
    MinuteQuotaReached = 45011 => ("the API is called too often",
        "slow down: kefu retries with backoff; spread bulk sends over time"),
    OutsideWindow = 45015 => (
        "the follower is outside the customer-service window, or has unfollowed",
        "wait until the follower writes or clicks again, or use a template or subscription \
         message instead"),
    ResponseCountLimit = 45047 => ("the customer-service quota of the window is used up",
        "wait until the follower interacts again; batch replies into fewer messages"),
    TypingInvalidCommand = 45072 => ("invalid typing command",
        "this is a kefu bug: report it with the command that failed"),
    TypingNoInteraction = 45080 => ("no interaction with the follower in the last 30 seconds",
        "show typing only right after the follower wrote"),
    AlreadyTyping = 45081 => ("the typing indicator is already showing",
        "nothing to do: it lasts 15 seconds"),
    InvalidMsgType = 45162 => ("this account may not send that message type",
        "send another kind (news and wxcard are refused on some accounts)"),
    ApiUnauthorized = 48001 => ("the account lacks the permission for this API",
        "the customer-service API needs a certified (微信认证) account of a non-personal \
         subject: certify the account, or check its interface permissions in the MP admin"),
    UserRefused = 48002 => ("the follower refuses messages from the account",
        "nothing to retry: the follower has turned messages off"),
    ClearQuotaExhausted = 48006 => ("the monthly quota of quota resets is used up",
        "wait until next month"),
    // §7.5: kf accounts and sessions (older 614xx codes still appear)
    KfSystemError = 61450 => ("kf system error", "try again later"),
    KfInvalidParameter = 61451 => ("invalid kf parameter",
        "check the account name and nickname"),
    KfInvalidAccountOld = 61452 => ("invalid kf account",
        "use prefix@wechat_id with the account's WeChat ID"),
    KfAccountExistsOld = 61453 => ("the kf account already exists",
        "choose another prefix, or update the existing account"),
    KfNicknameTooLong = 61454 => ("the kf nickname is too long",
        "use at most 16 characters"),
    KfIllegalCharacters = 61455 => ("the kf account or nickname has illegal characters",
        "use letters, digits and underscores in the prefix"),
    KfTooManyAccountsOld = 61456 => ("too many kf accounts",
        "delete an unused kf account first"),
    KfInvalidAvatarType = 61457 => ("invalid avatar file type",
        "upload a JPEG (640×640 recommended, at most 5 MB)"),
    KfNotEnabled = 65400 => ("the new customer-service feature is not enabled",
        "enable 客服功能 in the MP admin first"),
    KfInvalidAccount = 65401 => ("invalid kf account",
        "check the account name: prefix@wechat_id with the account's WeChat ID"),
    KfNotBound = 65402 => ("the kf account is not bound to a WeChat user",
        "invite a staff member with `kefu accounts invite` and have them accept"),
    KfIllegalNickname = 65403 => ("illegal kf nickname",
        "use at most 16 characters without special symbols"),
    KfIllegalAccount = 65404 => ("illegal kf account name",
        "use a prefix of up to 10 letters, digits or underscores"),
    KfAccountLimit = 65405 => ("the kf account limit is reached",
        "delete an unused kf account first (at most 100)"),
    KfAccountExists = 65406 => ("the kf account already exists",
        "choose another prefix, or update the existing account"),
    KfInviteeAlreadyKf = 65407 => ("the invited WeChat user is already a kf of this account",
        "nothing to do"),
    KfAlreadyInvited = 65408 => ("that WeChat user has already been invited",
        "wait for the staff member to accept the invitation"),
    KfInvalidWechatId = 65409 => ("invalid WeChat ID",
        "check the staff member's WeChat ID (微信号), not their nickname"),
    KfWorkerTooManyAccounts = 65410 => ("the invited user is bound to too many kf accounts",
        "invite another staff member"),
    KfPendingInvitation = 65411 => ("the kf account has a pending invitation",
        "wait for it to be accepted or to expire"),
    KfAlreadyBound = 65412 => ("the kf account is already bound to a WeChat user",
        "delete and re-add the account to bind someone else"),
    KfNoSession = 65413 => ("the follower has no kf session",
        "create a session first"),
    KfServedByOther = 65414 => ("the follower is served by another kf",
        "close that session first"),
    KfNotOnline = 65415 => ("the kf is not online",
        "have the staff member log in to the customer-service client"),
    KfInvalidQuery = 65416 => ("invalid query parameters",
        "check the time range: start before end, at most 24 hours, Unix seconds"),
    KfQuerySpanTooLong = 65417 => ("the query span is too long",
        "query at most 24 hours at a time"),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.meaning())
    }
}

/// Everything that can go wrong talking to WeChat.
///
/// Transport failures are split by what they mean for a message: [`ApiError::NotSent`] (the
/// request never reached WeChat, safe to retry) and [`ApiError::Ambiguous`] (it may have been
/// received and acted on; retrying could send a duplicate).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// WeChat answered with a non-zero `errcode`.
    #[error("{}", api_sentence(*code, errmsg))]
    Api { code: i64, errmsg: String },
    /// The request never reached WeChat (connection refused, DNS, TLS handshake, connect
    /// timeout): nothing happened there.
    #[error(
        "could not reach WeChat for {path}: {detail}; nothing was sent. Check this machine's \
         network and wechat.api_base"
    )]
    NotSent { path: String, detail: String },
    /// The request was sent but no complete answer came back (timeout, connection reset): WeChat
    /// may or may not have acted on it.
    #[error(
        "no complete answer from WeChat for {path}: {detail}; the request may have reached \
         WeChat, so it was not retried (check with the follower before sending again)"
    )]
    Ambiguous { path: String, detail: String },
    /// An HTTP status other than 200 with no errcode in the body.
    #[error(
        "WeChat answered {path} with HTTP {status}; check wechat.api_base (it must be the API \
         root, e.g. https://api.weixin.qq.com)"
    )]
    Status { path: String, status: u16 },
    /// A 200 answer kefu could not read.
    #[error("could not read WeChat's answer for {path}: {detail}")]
    Decode { path: String, detail: String },
    /// No app_id/app_secret configured.
    #[error(
        "no WeChat credentials configured: set wechat.app_id and wechat.app_secret in the \
         config file, or KEFU_WECHAT_APP_ID and KEFU_WECHAT_APP_SECRET"
    )]
    NoCredentials,
    /// The shared access-token cache (store, Redis) failed.
    #[error("the access-token cache failed: {0}")]
    Cache(String),
    /// The caller's input was refused before anything was sent.
    #[error("{0}")]
    Invalid(String),
}

fn api_sentence(code: i64, errmsg: &str) -> String {
    let c = ErrorCode::from_code(code);
    let errmsg = errmsg.trim();
    if errmsg.is_empty() {
        format!("WeChat API errcode {code} ({}): {}", c.meaning(), c.remedy())
    } else {
        format!("WeChat API errcode {code} ({}): {} [errmsg: {errmsg}]", c.meaning(), c.remedy())
    }
}

impl ApiError {
    /// The named code of a WeChat answer.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.errcode().map(ErrorCode::from_code)
    }

    pub fn errcode(&self) -> Option<i64> {
        match self {
            ApiError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Safe to retry because WeChat did not act on the request: it never got there, or WeChat
    /// said it was busy (-1) or rate-limited (45011).
    pub fn is_retriable(&self) -> bool {
        match self {
            ApiError::NotSent { .. } => true,
            ApiError::Api { code, .. } => matches!(code, -1 | 45011),
            _ => false,
        }
    }

    /// The access token was refused (40001, 40014, 42001): refresh it and retry once.
    pub fn is_token_error(&self) -> bool {
        matches!(self.errcode(), Some(40001 | 40014 | 42001))
    }

    /// The request may have reached WeChat and been acted on, but no answer says so.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, ApiError::Ambiguous { .. } | ApiError::Decode { .. })
    }

    /// Whether the follower's window is closed (45015) or its quota used up (45047): normal
    /// outcomes the ledger records, not failures to alarm about.
    pub fn is_window_error(&self) -> bool {
        matches!(self.errcode(), Some(45015 | 45047))
    }

    /// What the code means (for the admin API's JSON errors).
    pub fn meaning(&self) -> String {
        match self {
            ApiError::Api { code, .. } => ErrorCode::from_code(*code).meaning().to_string(),
            ApiError::NotSent { .. } => "WeChat could not be reached; nothing was sent".into(),
            ApiError::Ambiguous { .. } => "the request may or may not have reached WeChat".into(),
            ApiError::Status { status, .. } => format!("unexpected HTTP status {status}"),
            ApiError::Decode { .. } => "unreadable answer from WeChat".into(),
            ApiError::NoCredentials => "no app_id/app_secret configured".into(),
            ApiError::Cache(_) => "the access-token cache failed".into(),
            ApiError::Invalid(_) => "invalid request".into(),
        }
    }

    /// What to do about it.
    pub fn remedy(&self) -> String {
        match self {
            ApiError::Api { code, .. } => ErrorCode::from_code(*code).remedy().to_string(),
            ApiError::NotSent { .. } => {
                "check this machine's network and wechat.api_base, then try again".into()
            }
            ApiError::Ambiguous { .. } => {
                "check whether the follower got the message before sending it again".into()
            }
            ApiError::Status { .. } => "check wechat.api_base".into(),
            ApiError::Decode { .. } => "try again; report it if it persists".into(),
            ApiError::NoCredentials => {
                "set wechat.app_id and wechat.app_secret (KEFU_WECHAT_APP_ID, \
                 KEFU_WECHAT_APP_SECRET)"
                    .into()
            }
            ApiError::Cache(_) => "check the state store (state.dir or state.redis_url)".into(),
            ApiError::Invalid(_) => "fix the request".into(),
        }
    }
}

/// Builds a transport error from reqwest's, keeping only the path: reqwest's own `Display`
/// includes the URL, whose query carries `access_token` (or, for the classic token endpoint,
/// the app secret).
pub(crate) fn transport(path: &str, e: reqwest::Error) -> ApiError {
    let not_sent = e.is_connect() || e.is_builder();
    let detail = transport_cause(&e);
    if not_sent {
        ApiError::NotSent { path: path.to_string(), detail }
    } else {
        ApiError::Ambiguous { path: path.to_string(), detail }
    }
}

/// A response's `Retry-After` in seconds (the HTTP-date form is not used by the APIs kefu
/// calls), for the retry policy of backends and LLM servers (interface §11.5).
pub fn retry_after(resp: &reqwest::Response) -> Option<std::time::Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs)
}

/// What went wrong on the wire, in an operator's words and naming the server (scheme, host and
/// port only: the path and query are left out, the query may carry the access token or the
/// app secret): `connection refused by http://127.0.0.1:9`, `timed out waiting for
/// https://api.weixin.qq.com`, `DNS lookup failed for http://nowhere.invalid`. Every HTTP client
/// error kefu shows goes through here (the WeChat API client, `kefu push`), so they read alike.
pub fn transport_cause(e: &reqwest::Error) -> String {
    let server = e
        .url()
        .map(|u| {
            let host = u.host_str().unwrap_or("?");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        })
        .unwrap_or_else(|| "the server".into());
    let mut io_kind = None;
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        src = s.source();
    }
    let chain = describe(e);
    let text = chain.to_ascii_lowercase();
    use std::io::ErrorKind as K;
    if e.is_timeout() || io_kind == Some(K::TimedOut) {
        format!("timed out waiting for {server}")
    } else if io_kind == Some(K::ConnectionRefused) || text.contains("connection refused") {
        format!("connection refused by {server}: nothing listens there")
    } else if text.contains("dns error") || text.contains("failed to lookup address") {
        format!("DNS lookup failed for {server}: no such host")
    } else if matches!(io_kind, Some(K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe))
        || text.contains("connection reset")
    {
        format!("the connection to {server} was reset")
    } else if text.contains("certificate") || text.contains("tls") {
        format!("the TLS handshake with {server} failed: {chain}")
    } else {
        format!("{chain} ({server})")
    }
}

/// reqwest's error plus its sources, one line, with the URL (and its query) cut out.
fn describe(e: &reqwest::Error) -> String {
    let url = e.url().map(|u| u.as_str().to_string());
    let strip = |s: String| match &url {
        Some(u) => s.replace(&format!(" for url ({u})"), "").replace(u.as_str(), "<url>"),
        None => s,
    };
    let mut out = if e.is_timeout() { "timed out".to_string() } else { strip(e.to_string()) };
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let s_text = strip(s.to_string());
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips_and_has_text() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), *c, "{c:?}");
            assert!(!c.meaning().is_empty() && !c.remedy().is_empty(), "{c:?}");
        }
        assert_eq!(ErrorCode::from_code(12345), ErrorCode::Unknown(12345));
        assert_eq!(ErrorCode::Unknown(12345).code(), 12345);
    }

    #[test]
    fn the_issue_codes_are_named() {
        let expect = [
            (45015, ErrorCode::OutsideWindow),
            (45047, ErrorCode::ResponseCountLimit),
            (40164, ErrorCode::IpNotWhitelisted),
            (48001, ErrorCode::ApiUnauthorized),
            (40001, ErrorCode::InvalidCredential),
            (42001, ErrorCode::AccessTokenExpired),
            (65417, ErrorCode::KfQuerySpanTooLong),
            (-1, ErrorCode::SystemBusy),
        ];
        for (n, c) in expect {
            assert_eq!(ErrorCode::from_code(n), c);
        }
    }

    #[test]
    fn classification() {
        let api = |code| ApiError::Api { code, errmsg: String::new() };
        for c in [40001, 40014, 42001] {
            assert!(api(c).is_token_error(), "{c}");
            assert!(!api(c).is_retriable(), "{c}");
        }
        assert!(api(-1).is_retriable() && api(45011).is_retriable());
        assert!(!api(45015).is_retriable() && !api(45015).is_token_error());
        assert!(api(45047).is_window_error());
        let ns = ApiError::NotSent { path: "/p".into(), detail: "refused".into() };
        let amb = ApiError::Ambiguous { path: "/p".into(), detail: "timed out".into() };
        assert!(ns.is_retriable() && !ns.is_ambiguous());
        assert!(!amb.is_retriable() && amb.is_ambiguous());
        assert_eq!(api(45015).errcode(), Some(45015));
        assert_eq!(ns.errcode(), None);
    }

    #[test]
    fn operator_sentences() {
        let e = ApiError::Api {
            code: 40164,
            errmsg: "invalid ip 1.2.3.4 ipv6 ::ffff:1.2.3.4, not in whitelist".into(),
        };
        assert_eq!(
            e.to_string(),
            "WeChat API errcode 40164 (this machine's IP address is not in the API IP \
             whitelist): add this machine's egress IP to the API IP whitelist in the MP admin \
             (设置与开发 → 基本配置 → IP白名单), then try again [errmsg: invalid ip 1.2.3.4 ipv6 \
             ::ffff:1.2.3.4, not in whitelist]"
        );
        let e = ApiError::Api { code: 48001, errmsg: "api unauthorized".into() };
        assert!(e.to_string().contains("needs a certified (微信认证) account"), "{e}");
        let e = ApiError::Api { code: 99999, errmsg: String::new() };
        assert_eq!(
            e.to_string(),
            "WeChat API errcode 99999 (an error code kefu does not know): look the code up in \
             the WeChat Official Account error-code list; WeChat's errmsg, when given, explains it"
        );
    }
}
