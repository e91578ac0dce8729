//! Console sign-in sessions: an admin token exchanged for a cookie.
//!
//! The cookie holds a random session id; the gateway keeps only its
//! SHA-256, with the session's CSRF token and expiry, in memory (a restart
//! signs everyone out, which an admin on call can live with). Signing out
//! removes the session here, so a copied cookie is dead too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, SET_COOKIE};
use sha2::{Digest, Sha256};

/// The cookie's name.
const COOKIE_NAME: &str = "eagate_console";

/// How long a sign-in lasts, from sign-in (not from the last page).
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// The most sessions kept at once; expired ones are dropped first. Each is
/// a few dozen bytes, and only holders of an admin token can make one.
const MOST_SESSIONS: usize = 10_000;

/// Whose session it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// An admin: every page but the affiliates' own.
    Admin,
    /// An affiliate: its own portal page only.
    Affiliate(String),
}

/// A signed-in admin or affiliate, as a page sees it.
#[derive(Debug, Clone)]
pub(crate) struct SignedIn {
    /// Who, for the record: the token's id (the start of its hash).
    pub(crate) actor: String,
    /// What the session may see.
    pub(crate) role: Role,
    /// What every form of this session must carry back.
    pub(crate) csrf: String,
}

#[derive(Debug)]
struct Session {
    signed_in: SignedIn,
    expires_at: Instant,
}

/// How long a one-time sign-in link an admin issues stays usable.
pub(crate) const LINK_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The console's live sessions, and the one-time sign-in links admins
/// issued for affiliates, each by the SHA-256 of its secret.
#[derive(Debug, Default)]
pub(crate) struct ConsoleSessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    links: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

/// 32 random bytes as hex: session ids, CSRF tokens, form keys.
pub(crate) fn random_text() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source works");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Whether two texts are equal, in time that does not depend on where they
/// first differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    key_of(a) == key_of(b)
}

impl ConsoleSessions {
    /// Starts a session for `actor`; the cookie's value.
    pub(crate) fn start(&self, actor: String, role: Role) -> String {
        let id = random_text();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().expect("console sessions");
        sessions.retain(|_, session| session.expires_at > now);
        if sessions.len() >= MOST_SESSIONS {
            // The oldest goes: whoever made ten thousand sign-ins holds an
            // admin token anyway.
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            key_of(&id),
            Session {
                signed_in: SignedIn {
                    actor,
                    role,
                    csrf: random_text(),
                },
                expires_at: now + SESSION_LIFETIME,
            },
        );
        id
    }

    /// The session the request's cookie names, if it is live.
    pub(crate) fn of(&self, headers: &HeaderMap) -> Option<SignedIn> {
        let id = cookie(headers)?;
        let mut sessions = self.sessions.lock().expect("console sessions");
        let key = key_of(&id);
        match sessions.get(&key) {
            Some(session) if session.expires_at > Instant::now() => Some(session.signed_in.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Issues a one-time sign-in link's secret for `affiliate_id`, usable
    /// for [`LINK_LIFETIME`].
    /// None when [`MOST_SESSIONS`] links are live already.
    pub(crate) fn issue_link(&self, affiliate_id: &str) -> Option<String> {
        let secret = random_text();
        let now = Instant::now();
        let mut links = self.links.lock().expect("console links");
        links.retain(|_, (_, expires_at)| *expires_at > now);
        if links.len() >= MOST_SESSIONS {
            return None;
        }
        links.insert(
            key_of(&secret),
            (affiliate_id.to_owned(), now + LINK_LIFETIME),
        );
        Some(secret)
    }

    /// Whether a link's secret is live (for the page that offers to use it).
    pub(crate) fn link_is_live(&self, secret: &str) -> bool {
        let links = self.links.lock().expect("console links");
        links
            .get(&key_of(secret))
            .is_some_and(|(_, expires_at)| *expires_at > Instant::now())
    }

    /// Uses a link: the affiliate it was issued for, once, if not expired.
    pub(crate) fn use_link(&self, secret: &str) -> Option<String> {
        let (affiliate_id, expires_at) = self
            .links
            .lock()
            .expect("console links")
            .remove(&key_of(secret))?;
        (expires_at > Instant::now()).then_some(affiliate_id)
    }

    /// Ends the session the request's cookie names.
    pub(crate) fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            self.sessions
                .lock()
                .expect("console sessions")
                .remove(&key_of(&id));
        }
    }
}

/// The console cookie's value in the request, if any.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
}

/// Whether the request reached the gateway over TLS (through a proxy that
/// says so): then the cookie is `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` header that carries a new session: HttpOnly (no script
/// reads it), SameSite=Strict (no other site's page sends it), limited to
/// the console's paths, expiring with the session.
pub(crate) fn set_cookie(id: &str, request: &HeaderMap) -> (axum::http::HeaderName, String) {
    let secure = if over_tls(request) { "; Secure" } else { "" };
    (
        SET_COOKIE,
        format!(
            "{COOKIE_NAME}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_LIFETIME.as_secs()
        ),
    )
}

/// The `Set-Cookie` header that removes the cookie.
pub(crate) fn clear_cookie() -> (axum::http::HeaderName, String) {
    (
        SET_COOKIE,
        format!("{COOKIE_NAME}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"),
    )
}
