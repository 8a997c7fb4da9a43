//! Admin API authentication: bearer tokens, each naming the actor the history records.
//!
//! Tokens come from `SWITCHYARD_ADMIN_TOKEN` (one token, actor `admin`) and/or a token file of
//! `NAME:TOKEN` lines (`--admin-token-file`). Only SHA-256 digests are kept; a presented token
//! is hashed and compared with every digest in constant time, so neither the token's bytes nor
//! its length nor which entry matched shows in the timing.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Environment variable holding the single admin token (actor `admin`).
pub const TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";

/// Actor name of the token given in [`TOKEN_ENV`].
pub const ENV_ACTOR: &str = "admin";

/// Why the token configuration cannot be used; the server refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}:{line}: expected NAME:TOKEN")]
    Syntax { path: String, line: usize },
    #[error("{path}:{line}: actor name {name:?}: use letters, digits, '-', '_', '.' or '@'")]
    BadName {
        path: String,
        line: usize,
        name: String,
    },
    #[error("{path}:{line}: the token is empty or contains whitespace")]
    BadToken { path: String, line: usize },
    #[error("{origin}: actor {name:?} is defined twice")]
    DuplicateName { origin: String, name: String },
    #[error("{origin}: actor {name:?} has the same token as actor {other:?}")]
    DuplicateToken {
        origin: String,
        name: String,
        other: String,
    },
    #[error("{TOKEN_ENV} is set but empty or contains whitespace")]
    BadEnv,
}

/// Why a request was not authenticated (always a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The server has no tokens, so nothing can change through the API.
    NoTokens,
    /// No `Authorization: Bearer ...` header.
    Missing,
    /// A token was given and matches no actor.
    Invalid,
}

impl Denied {
    /// The message sent to the client.
    pub fn message(self) -> &'static str {
        match self {
            Denied::NoTokens => {
                "changes are disabled: the server has no admin token (set SWITCHYARD_ADMIN_TOKEN or --admin-token-file)"
            }
            Denied::Missing => "missing bearer token (Authorization: Bearer TOKEN)",
            Denied::Invalid => "invalid token",
        }
    }
}

/// The accepted tokens, as (actor, SHA-256 of the token). Empty = every change is refused.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("actors", &self.actors())
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn valid_actor(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

fn valid_token(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_whitespace)
}

impl Tokens {
    /// Loads the tokens from the environment value of [`TOKEN_ENV`] (if any) and the token file
    /// (if any). Both may be given; actors and tokens must then be distinct.
    pub fn load(env: Option<&str>, file: Option<&Path>) -> Result<Tokens, AuthError> {
        let mut t = Tokens::default();
        if let Some(v) = env {
            let v = v.trim_end_matches(['\n', '\r']);
            if !valid_token(v) {
                return Err(AuthError::BadEnv);
            }
            t.add(TOKEN_ENV, ENV_ACTOR, v)?;
        }
        if let Some(path) = file {
            let label = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|error| AuthError::Read {
                path: label.clone(),
                error,
            })?;
            t.add_file(&label, &text)?;
        }
        Ok(t)
    }

    /// Adds the `NAME:TOKEN` lines of `text` (blank lines and `#` comments skipped).
    pub fn add_file(&mut self, label: &str, text: &str) -> Result<(), AuthError> {
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (name, token) = l.split_once(':').ok_or(AuthError::Syntax {
                path: label.to_string(),
                line,
            })?;
            let (name, token) = (name.trim(), token.trim());
            if !valid_actor(name) {
                return Err(AuthError::BadName {
                    path: label.to_string(),
                    line,
                    name: name.to_string(),
                });
            }
            if !valid_token(token) {
                return Err(AuthError::BadToken {
                    path: label.to_string(),
                    line,
                });
            }
            self.add(label, name, token)?;
        }
        Ok(())
    }

    fn add(&mut self, origin: &str, name: &str, token: &str) -> Result<(), AuthError> {
        let d = digest(token.as_bytes());
        for (other, od) in &self.entries {
            if other == name {
                return Err(AuthError::DuplicateName {
                    origin: origin.to_string(),
                    name: name.to_string(),
                });
            }
            if *od == d {
                return Err(AuthError::DuplicateToken {
                    origin: origin.to_string(),
                    name: name.to_string(),
                    other: other.clone(),
                });
            }
        }
        self.entries.push((name.to_string(), d));
        Ok(())
    }

    /// True when no token is configured (every change is refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The actor names, in configuration order.
    pub fn actors(&self) -> Vec<&str> {
        self.entries.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The actor whose token `presented` is. Every entry is compared, in constant time.
    pub fn actor_for(&self, presented: &[u8]) -> Option<&str> {
        let d = digest(presented);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, (_, want)) in self.entries.iter().enumerate() {
            let hit = want.as_slice().ct_eq(d.as_slice());
            index.conditional_assign(&(i as u64), hit);
            found |= hit;
        }
        if bool::from(found) {
            self.entries.get(index as usize).map(|(n, _)| n.as_str())
        } else {
            None
        }
    }

    /// Authenticates an `Authorization` header value: `Bearer TOKEN` (scheme case-insensitive).
    /// Returns the actor name.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<String, Denied> {
        if self.is_empty() {
            return Err(Denied::NoTokens);
        }
        let Some(h) = authorization else {
            return Err(Denied::Missing);
        };
        let h = std::str::from_utf8(h).map_err(|_| Denied::Invalid)?.trim();
        let (scheme, token) = h.split_once(' ').ok_or(Denied::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Denied::Missing);
        }
        self.actor_for(token.trim().as_bytes())
            .map(str::to_string)
            .ok_or(Denied::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_file_tokens_name_actors() {
        let mut t = Tokens::load(Some("s3cret\n"), None).unwrap();
        t.add_file("f", "# ops\n\nalice: tok-a\nbob:tok-b\n")
            .unwrap();
        assert_eq!(t.actors(), ["admin", "alice", "bob"]);
        assert_eq!(t.check(Some(b"Bearer s3cret")), Ok("admin".into()));
        assert_eq!(t.check(Some(b"bearer tok-b")), Ok("bob".into()));
        assert_eq!(t.check(Some(b"Bearer tok-a")), Ok("alice".into()));
        assert_eq!(t.check(Some(b"Bearer tok-")), Err(Denied::Invalid));
        assert_eq!(t.check(Some(b"Bearer tok-ab")), Err(Denied::Invalid));
        assert_eq!(t.check(Some(b"Basic dG9rLWE=")), Err(Denied::Missing));
        assert_eq!(t.check(None), Err(Denied::Missing));
        assert_eq!(
            Tokens::default().check(Some(b"Bearer x")),
            Err(Denied::NoTokens)
        );
    }

    #[test]
    fn bad_files_are_refused() {
        let mut t = Tokens::default();
        assert!(matches!(
            t.add_file("f", "alice\n"),
            Err(AuthError::Syntax { line: 1, .. })
        ));
        assert!(matches!(
            t.add_file("f", "al ice:x\n"),
            Err(AuthError::BadName { .. })
        ));
        assert!(matches!(
            t.add_file("f", "alice:\n"),
            Err(AuthError::BadToken { .. })
        ));
        let mut t = Tokens::default();
        assert!(matches!(
            t.add_file("f", "a:x\nb:x\n"),
            Err(AuthError::DuplicateToken { .. })
        ));
        let mut t = Tokens::default();
        assert!(matches!(
            t.add_file("f", "a:x\na:y\n"),
            Err(AuthError::DuplicateName { .. })
        ));
        assert!(matches!(
            Tokens::load(Some(""), None),
            Err(AuthError::BadEnv)
        ));
    }
}
