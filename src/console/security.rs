//! The console's sessions and request checks: sign-in (the admin token, compared in constant
//! time; failures rate-limited per client address), the server-side session store, the
//! session cookie, the per-session CSRF token with the Origin/Referer check, and the security
//! headers of every console response.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::HttpResponseBuilder;
use parking_lot::Mutex;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::Secret;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kefu_console";
/// A session unused this long ends.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Failed sign-ins allowed per client address within [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// No inline script, no foreign origin for anything; forms post to the console only.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    /// Sent with every state-changing form (per session, not single-use: §11.8).
    pub csrf: String,
    last_seen: Instant,
    /// What the last action said (ok, message), shown once by the next page: kept here, not
    /// in the URL, so no link can put words in the console's mouth.
    pub flash: Option<(bool, String)>,
}

/// Why a sign-in failed.
#[derive(Debug, PartialEq, Eq)]
pub enum SignInError {
    Wrong,
    /// Too many failures from this address: wait this long.
    TooMany(Duration),
}

/// Why a state-changing request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No session (or it ended): sign in again.
    SignedOut,
    /// A foreign Origin/Referer, or none, or a missing or wrong CSRF token.
    CrossSite,
}

/// The console's shared state (app data `Arc<ConsoleState>`).
pub struct ConsoleState {
    /// SHA-256 of `admin.token`; None when it is empty (the console is off).
    digest: Option<[u8; 32]>,
    secure_cookie: bool,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl std::fmt::Debug for ConsoleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleState").field("enabled", &self.enabled()).finish_non_exhaustive()
    }
}

fn random_hex() -> String {
    hex::encode(rand::thread_rng().r#gen::<[u8; 32]>())
}

impl ConsoleState {
    /// `admin.token` (empty: the console is off) and `console.secure_cookie`.
    pub fn new(token: &Secret, secure_cookie: bool) -> ConsoleState {
        let digest = (!token.is_empty()).then(|| Sha256::digest(token.expose().as_bytes()).into());
        ConsoleState {
            digest,
            secure_cookie,
            sessions: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.digest.is_some()
    }

    /// Checks the token (digests compared in constant time, so neither its content nor its
    /// length leaks through timing) and opens a session; failures count against `client`.
    pub fn sign_in(&self, client: Option<IpAddr>, token: &str) -> Result<Session, SignInError> {
        let now = Instant::now();
        if let Some(ip) = client {
            let mut f = self.failures.lock();
            f.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
            if let Some((n, since)) = f.get(&ip)
                && *n >= MAX_FAILURES
            {
                return Err(SignInError::TooMany(
                    FAILURE_WINDOW.saturating_sub(now.duration_since(*since)),
                ));
            }
        }
        let given: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let ok = self.digest.is_some_and(|d| bool::from(d.ct_eq(&given)));
        if !ok {
            if let Some(ip) = client {
                self.failures.lock().entry(ip).or_insert((0, now)).0 += 1;
            }
            return Err(SignInError::Wrong);
        }
        let s = Session { id: random_hex(), csrf: random_hex(), last_seen: now, flash: None };
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| now.duration_since(s.last_seen) < IDLE);
        sessions.insert(s.id.clone(), s.clone());
        Ok(s)
    }

    /// The request's live session, if any (and marks it used); its flash message is handed
    /// over once.
    pub fn session(&self, req: &HttpRequest) -> Option<Session> {
        let id = cookie(req, SESSION_COOKIE)?;
        let mut sessions = self.sessions.lock();
        let s = sessions.get_mut(&id)?;
        if s.last_seen.elapsed() >= IDLE {
            sessions.remove(&id);
            return None;
        }
        s.last_seen = Instant::now();
        let out = s.clone();
        s.flash = None;
        Some(out)
    }

    /// Whether the session `id` is still signed in (not signed out, not idle too long),
    /// without counting this as a use: the live event stream asks before every event.
    pub fn is_live(&self, id: &str) -> bool {
        self.sessions.lock().get(id).is_some_and(|s| s.last_seen.elapsed() < IDLE)
    }

    /// Leaves a message for the session's next page.
    pub fn set_flash(&self, id: &str, ok: bool, msg: String) {
        if let Some(s) = self.sessions.lock().get_mut(id) {
            s.flash = Some((ok, msg));
        }
    }

    /// Ends a session: its cookie is worthless from now on.
    pub fn sign_out(&self, id: &str) {
        self.sessions.lock().remove(id);
    }

    /// The session of a state-changing request, after the origin check and the CSRF token.
    pub fn check_post(&self, req: &HttpRequest, csrf: Option<&str>) -> Result<Session, Refusal> {
        if !same_origin(req) {
            return Err(Refusal::CrossSite);
        }
        let s = self.session(req).ok_or(Refusal::SignedOut)?;
        let given = csrf.unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(s.csrf.as_bytes())) {
            Ok(s)
        } else {
            Err(Refusal::CrossSite)
        }
    }

    /// The `Set-Cookie` value of a new session.
    pub fn cookie(&self, s: &Session) -> String {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        format!("{SESSION_COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict{secure}", s.id)
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_cookie(&self) -> String {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        format!("{SESSION_COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all("Cookie")
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether a state-changing request comes from a console page: its `Origin` (else its
/// `Referer`) names this very host. Browsers send `Origin` with every POST; a request with
/// neither is refused.
pub fn same_origin(req: &HttpRequest) -> bool {
    let Some(host) = req.headers().get("Host").and_then(|h| h.to_str().ok()) else { return false };
    let from = req
        .headers()
        .get("Origin")
        .or_else(|| req.headers().get("Referer"))
        .and_then(|h| h.to_str().ok());
    let Some(url) = from.and_then(|f| url::Url::parse(f).ok()) else { return false };
    let Some(h) = url.host_str() else { return false };
    let origin_host = match url.port() {
        Some(p) => format!("{h}:{p}"),
        None => h.to_string(),
    };
    origin_host.eq_ignore_ascii_case(host)
}

/// The headers of every console response: the CSP, no sniffing, no framing, no referrer
/// outside, no caching of pages that show follower data.
pub fn headers(r: &mut HttpResponseBuilder) {
    r.insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "same-origin"))
        .insert_header(("Cache-Control", "no-store"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn sign_in_compares_the_token_and_limits_failures() {
        let st = ConsoleState::new(&Secret::new("console-token-123456"), false);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(st.sign_in(Some(ip), "console-token-123456").is_ok());
        for _ in 0..MAX_FAILURES {
            assert_eq!(st.sign_in(Some(ip), "wrong").unwrap_err(), SignInError::Wrong);
        }
        assert!(matches!(
            st.sign_in(Some(ip), "console-token-123456"),
            Err(SignInError::TooMany(_))
        ));
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(st.sign_in(Some(other), "console-token-123456").is_ok(), "per address");
        let off = ConsoleState::new(&Secret::default(), false);
        assert!(!off.enabled() && off.sign_in(None, "").is_err());
    }

    #[test]
    fn origin_must_be_this_host() {
        let ok = TestRequest::post()
            .insert_header(("Host", "127.0.0.1:8080"))
            .insert_header(("Origin", "http://127.0.0.1:8080"))
            .to_http_request();
        assert!(same_origin(&ok));
        let referer = TestRequest::post()
            .insert_header(("Host", "kefu.example.com"))
            .insert_header(("Referer", "https://kefu.example.com/console/rules"))
            .to_http_request();
        assert!(same_origin(&referer));
        for (origin, header) in [("http://evil.example", "Origin"), ("null", "Origin"), ("", "")] {
            let mut r = TestRequest::post().insert_header(("Host", "127.0.0.1:8080"));
            if !header.is_empty() {
                r = r.insert_header((header, origin));
            }
            assert!(!same_origin(&r.to_http_request()), "{origin}");
        }
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let st = ConsoleState::new(&Secret::new("console-token-123456"), true);
        let s = st.sign_in(None, "console-token-123456").unwrap();
        let c = st.cookie(&s);
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("; Secure"),
            "{c}"
        );
        st.sign_out(&s.id);
        assert!(st.sessions.lock().is_empty());
    }
}
