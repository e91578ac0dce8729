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
/// a few dozen bytes.
const MOST_SESSIONS: usize = 10_000;

/// The most live sessions one token (or link) may hold: its oldest goes
/// first, so signing in over and over cannot fill the table.
const PER_ACTOR: usize = 16;

/// Whose session it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// An admin: every page but the affiliates' own.
    Admin,
    /// An affiliate: its own portal page only.
    Affiliate(String),
}

/// What a session was started with, checked again on every page: a
/// session ends with its credential (a token removed or replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    /// A token, by its SHA-256 (hex): an admin's, or an affiliate's own.
    Token(String),
    /// A one-time link: good while its affiliate is.
    Link,
}

/// A signed-in admin or affiliate, as a page sees it.
#[derive(Debug, Clone)]
pub(crate) struct SignedIn {
    /// Who, for the record: the token's id (the start of its hash).
    pub(crate) actor: String,
    /// What it signed in with.
    pub(crate) credential: Credential,
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
#[derive(Debug)]
pub(crate) struct ConsoleSessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    links: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    /// [`MOST_SESSIONS`], smaller in tests.
    most: usize,
}

impl Default for ConsoleSessions {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
            links: Mutex::default(),
            most: MOST_SESSIONS,
        }
    }
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
    /// Starts a session for `actor`; the cookie's value, or None when the
    /// table is full of sessions this one may not push out.
    pub(crate) fn start(
        &self,
        actor: String,
        role: Role,
        credential: Credential,
    ) -> Option<String> {
        let id = random_text();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().expect("console sessions");
        sessions.retain(|_, session| session.expires_at > now);
        let oldest = |sessions: &HashMap<[u8; 32], Session>, may_go: &dyn Fn(&SignedIn) -> bool| {
            sessions
                .iter()
                .filter(|(_, s)| may_go(&s.signed_in))
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k)
        };
        let own = sessions
            .values()
            .filter(|s| s.signed_in.actor == actor)
            .count();
        if own >= PER_ACTOR
            && let Some(key) = oldest(&sessions, &|s| s.actor == actor)
        {
            sessions.remove(&key);
        }
        if sessions.len() >= self.most {
            // An affiliate's sign-in never pushes out an admin's session.
            let key = oldest(&sessions, &|s| role == Role::Admin || s.role != Role::Admin)?;
            sessions.remove(&key);
        }
        sessions.insert(
            key_of(&id),
            Session {
                signed_in: SignedIn {
                    actor,
                    credential,
                    role,
                    csrf: random_text(),
                },
                expires_at: now + SESSION_LIFETIME,
            },
        );
        Some(id)
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
        if links.len() >= self.most {
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

/// Whether a sign-in form came from a page of this site: a browser says
/// where a request comes from (`Sec-Fetch-Site`, or at least `Origin`),
/// and another site must not sign a visitor in to a session of its
/// choosing. Requests without either (not from a browser) pass.
pub(crate) fn same_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, origin_host)| origin_host == host),
        (Some(_), None) => false,
        (None, _) => true,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn cookie_of(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("{COOKIE_NAME}={id}")).unwrap(),
        );
        headers
    }

    fn affiliate(n: usize) -> (String, Role, Credential) {
        (
            format!("token:affiliate{n}"),
            Role::Affiliate(format!("af_{n}")),
            Credential::Token(format!("hash{n}")),
        )
    }

    #[test]
    fn one_token_holds_at_most_sixteen_sessions_its_oldest_going_first() {
        let sessions = ConsoleSessions::default();
        let ids: Vec<String> = (0..20)
            .map(|_| {
                let (actor, role, credential) = affiliate(1);
                sessions.start(actor, role, credential).unwrap()
            })
            .collect();
        let live = ids
            .iter()
            .filter(|id| sessions.of(&cookie_of(id)).is_some())
            .count();
        assert_eq!(live, PER_ACTOR);
        assert!(sessions.of(&cookie_of(&ids[19])).is_some(), "the newest");
    }

    #[test]
    fn affiliates_signing_in_never_push_out_an_admins_session() {
        let sessions = ConsoleSessions {
            most: 3,
            ..ConsoleSessions::default()
        };
        let admin = sessions
            .start(
                "token:admin".into(),
                Role::Admin,
                Credential::Token("admin".into()),
            )
            .unwrap();
        let (actor, role, credential) = affiliate(1);
        sessions.start(actor, role, credential).unwrap();
        let (actor, role, credential) = affiliate(2);
        sessions.start(actor, role, credential).unwrap();
        // Full: a third affiliate pushes out the oldest affiliate, never
        // the admin; with only admins left it would be refused.
        for n in 3..10 {
            let (actor, role, credential) = affiliate(n);
            assert!(sessions.start(actor, role, credential).is_some());
            assert!(sessions.of(&cookie_of(&admin)).is_some(), "after {n}");
        }
        let full_of_admins = ConsoleSessions {
            most: 1,
            ..ConsoleSessions::default()
        };
        full_of_admins
            .start(
                "token:admin".into(),
                Role::Admin,
                Credential::Token("a".into()),
            )
            .unwrap();
        let (actor, role, credential) = affiliate(1);
        assert!(full_of_admins.start(actor, role, credential).is_none());
    }

    #[test]
    fn a_sign_in_form_from_another_site_is_told_apart() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            headers
        };
        assert!(same_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_site(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(same_site(&headers(&[
            ("origin", "https://gw.example"),
            ("host", "gw.example")
        ])));
        assert!(!same_site(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "gw.example")
        ])));
        assert!(same_site(&headers(&[])), "not a browser");
    }
}
