//! The session cookie: writing `Set-Cookie` and finding the id in `Cookie`.
//!
//! Defaults follow what a session cookie should be in 2025: `HttpOnly` (no
//! script can read it), `SameSite=Lax` (not sent on cross-site sub-requests),
//! `Path=/`, and no `Max-Age` (a browser-session cookie, as ASP.NET's was;
//! the server-side timeout is what ends a session). `Secure` is opt-in
//! because a worker cannot know whether a TLS proxy sits in front of it.

use std::time::Duration;

use super::error::SessionError;
use super::id::SessionId;

/// The cookie name used unless [`CookieOptions::name`] says otherwise.
pub const DEFAULT_COOKIE_NAME: &str = "appvisor_sid";

/// `SameSite` attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// Sent on top-level navigations from other sites, not on their sub-requests.
    Lax,
    /// Never sent from other sites.
    Strict,
    /// Always sent; browsers then require `Secure`.
    None,
}

/// How the session cookie is written. Check custom values with
/// [`validate`](Self::validate) before use; the layer does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieOptions {
    /// Cookie name; an RFC 6265 token.
    pub name: String,
    /// `Path` attribute.
    pub path: String,
    /// `Domain` attribute, if any.
    pub domain: Option<String>,
    /// Add `Secure` (only sent over HTTPS).
    pub secure: bool,
    /// `SameSite` attribute.
    pub same_site: SameSite,
    /// `Max-Age`; `None` makes a browser-session cookie. When set, the layer
    /// re-sends the cookie on every response so its expiry slides too.
    pub max_age: Option<Duration>,
}

impl Default for CookieOptions {
    fn default() -> Self {
        CookieOptions {
            name: DEFAULT_COOKIE_NAME.to_owned(),
            path: "/".to_owned(),
            domain: None,
            secure: false,
            same_site: SameSite::Lax,
            max_age: None,
        }
    }
}

impl CookieOptions {
    /// Rejects names, paths and domains that would break or inject into the
    /// `Set-Cookie` header.
    pub fn validate(&self) -> Result<(), SessionError> {
        let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if self.name.is_empty() || !self.name.chars().all(is_token) {
            return Err(SessionError::BadCookieOption {
                field: "name",
                value: self.name.clone(),
                why: "use letters, digits and !#$%&'*+-.^_`|~ only",
            });
        }
        let is_attr = |c: char| c.is_ascii_graphic() && c != ';';
        if !self.path.starts_with('/') || !self.path.chars().all(is_attr) {
            return Err(SessionError::BadCookieOption {
                field: "path",
                value: self.path.clone(),
                why: "start with / and use visible ASCII without ';'",
            });
        }
        if let Some(domain) = &self.domain {
            if domain.is_empty()
                || !domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                return Err(SessionError::BadCookieOption {
                    field: "domain",
                    value: domain.clone(),
                    why: "use letters, digits, '.' and '-' only",
                });
            }
        }
        Ok(())
    }

    fn attributes(&self, out: &mut String) {
        out.push_str("; Path=");
        out.push_str(&self.path);
        if let Some(domain) = &self.domain {
            out.push_str("; Domain=");
            out.push_str(domain);
        }
        out.push_str("; HttpOnly");
        out.push_str(match self.same_site {
            SameSite::Lax => "; SameSite=Lax",
            SameSite::Strict => "; SameSite=Strict",
            SameSite::None => "; SameSite=None",
        });
        if self.secure {
            out.push_str("; Secure");
        }
    }
}

/// The `Set-Cookie` value that hands `id` to the browser.
pub fn set_cookie_header(id: &SessionId, options: &CookieOptions) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(&options.name);
    out.push('=');
    out.push_str(id.as_str());
    options.attributes(&mut out);
    if let Some(max_age) = options.max_age {
        out.push_str(&format!("; Max-Age={}", max_age.as_secs()));
    }
    out
}

/// The `Set-Cookie` value that makes the browser forget its session cookie
/// (after [`Sessions::abandon`](super::Sessions::abandon)).
pub fn expire_cookie_header(options: &CookieOptions) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(&options.name);
    out.push('=');
    options.attributes(&mut out);
    out.push_str("; Max-Age=0");
    out
}

/// The first well-formed session id under `cookie_name` in one `Cookie`
/// header value (`a=1; appvisor_sid=…; b=2`). Malformed ids are skipped, so
/// a stale cookie with another format does not hide a good one; anything
/// returned has passed [`SessionId::parse`].
pub fn id_from_cookie_header(header_value: &str, cookie_name: &str) -> Option<SessionId> {
    header_value.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if name.trim() != cookie_name {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        SessionId::parse(value).ok()
    })
}

/// [`id_from_cookie_header`] over every `Cookie` header of a request
/// (HTTP/2 may split cookies over several).
pub fn id_from_headers(headers: &http::HeaderMap, cookie_name: &str) -> Option<SessionId> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| id_from_cookie_header(value, cookie_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookie_has_safe_defaults() {
        let id = SessionId::parse("AAAABBBBCCCCDDDDEEEEFFFF").unwrap();
        let header = set_cookie_header(&id, &CookieOptions::default());
        assert_eq!(
            header,
            "appvisor_sid=AAAABBBBCCCCDDDDEEEEFFFF; Path=/; HttpOnly; SameSite=Lax"
        );
        let opts = CookieOptions {
            secure: true,
            max_age: Some(Duration::from_secs(1200)),
            ..CookieOptions::default()
        };
        let header = set_cookie_header(&id, &opts);
        assert!(header.ends_with("; Secure; Max-Age=1200"), "{header}");
        assert!(expire_cookie_header(&opts).contains("Max-Age=0"));
    }

    #[test]
    fn cookie_parsing_finds_only_valid_ids() {
        let good = "AAAABBBBCCCCDDDDEEEEFFFF";
        let header = format!("x=1; appvisor_sid=short; appvisor_sid={good}; y=2");
        assert_eq!(
            id_from_cookie_header(&header, "appvisor_sid")
                .unwrap()
                .as_str(),
            good
        );
        assert!(
            id_from_cookie_header("appvisor_sid=AAAA/BBBCCCCDDDDEEEEFFFF", "appvisor_sid")
                .is_none()
        );
        assert!(id_from_cookie_header(&format!("other={good}"), "appvisor_sid").is_none());
        let huge = format!("appvisor_sid={}", "A".repeat(1 << 20));
        assert!(id_from_cookie_header(&huge, "appvisor_sid").is_none());
    }

    #[test]
    fn injectable_options_are_rejected() {
        let bad_name = CookieOptions {
            name: "sid; Domain=evil".into(),
            ..CookieOptions::default()
        };
        assert!(bad_name.validate().is_err());
        let bad_path = CookieOptions {
            path: "/; Secure".into(),
            ..CookieOptions::default()
        };
        assert!(bad_path.validate().is_err());
        assert!(CookieOptions::default().validate().is_ok());
    }
}
