//! CloudFront path patterns: `*` matches any run of characters (including `/` and nothing),
//! `?` exactly one character; everything else is literal and case-sensitive. Patterns are
//! matched against the path without its query string.

use std::fmt;

/// Characters CloudFront accepts in a path pattern (plus `%` for encoded paths).
fn allowed(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"_-.*$/~\"'@:+&?%=!,;()[]".contains(&c)
}

/// A compiled pattern. Literal runs are kept as byte strings so matching never allocates.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
enum Token {
    Lit(Box<[u8]>),
    One,
    Any,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("path pattern is empty")]
    Empty,
    #[error("path pattern {pattern:?} has {ch:?} at byte {at}; CloudFront allows A-Z a-z 0-9 _ - . * $ / ~ \" ' @ : + & ? and %")]
    BadChar {
        pattern: String,
        ch: char,
        at: usize,
    },
    #[error("path pattern is {len} characters; CloudFront's limit is 255")]
    TooLong { len: usize },
}

impl Pattern {
    /// Compiles `src`. A pattern without a leading `/` is taken as if it had one, as CloudFront
    /// does (`images/*` = `/images/*`); `*` alone matches every path.
    pub fn parse(src: &str) -> Result<Pattern, PatternError> {
        if src.is_empty() {
            return Err(PatternError::Empty);
        }
        if src.len() > 255 {
            return Err(PatternError::TooLong { len: src.len() });
        }
        if let Some((at, ch)) = src
            .char_indices()
            .find(|&(_, c)| !c.is_ascii() || !allowed(c as u8))
        {
            return Err(PatternError::BadChar {
                pattern: src.to_string(),
                ch,
                at,
            });
        }
        let source = if src.starts_with('/') || src.starts_with('*') {
            src.to_string()
        } else {
            format!("/{src}")
        };
        let mut tokens = Vec::new();
        let mut lit = Vec::new();
        for &b in source.as_bytes() {
            match b {
                b'*' | b'?' => {
                    if !lit.is_empty() {
                        tokens.push(Token::Lit(std::mem::take(&mut lit).into_boxed_slice()));
                    }
                    if b == b'*' {
                        // `**` is the same as `*`.
                        if tokens.last() != Some(&Token::Any) {
                            tokens.push(Token::Any);
                        }
                    } else {
                        tokens.push(Token::One);
                    }
                }
                _ => lit.push(b),
            }
        }
        if !lit.is_empty() {
            tokens.push(Token::Lit(lit.into_boxed_slice()));
        }
        Ok(Pattern { source, tokens })
    }

    /// The pattern as written (with the leading `/` added if it was missing).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The literal text before the first wildcard: every matching path starts with it.
    pub fn literal_prefix(&self) -> &[u8] {
        match self.tokens.first() {
            Some(Token::Lit(l)) => l,
            _ => b"",
        }
    }

    /// True when the pattern has no wildcard.
    pub fn is_exact(&self) -> bool {
        matches!(self.tokens.as_slice(), [Token::Lit(_)] | [])
    }

    /// True when this pattern matches every path that `other` matches, as far as a cheap check
    /// can tell (used only to warn about shadowed routes; a `false` may be a missed warning).
    pub fn covers(&self, other: &Pattern) -> bool {
        if self.source == other.source {
            return true;
        }
        // `P*` covers any pattern whose literal prefix starts with P.
        if let [rest @ .., Token::Any] = self.tokens.as_slice() {
            let p: &[u8] = match rest {
                [] => b"",
                [Token::Lit(l)] => l,
                _ => return false,
            };
            return other.literal_prefix().starts_with(p);
        }
        false
    }

    /// Matches `path` (bytes, without the query string).
    pub fn matches(&self, path: &[u8]) -> bool {
        match_tokens(&self.tokens, path)
    }
}

/// Glob matching with single-star backtracking: linear in practice, O(n*m) worst case, and
/// never recursive, so a hostile path cannot blow the stack.
fn match_tokens(tokens: &[Token], path: &[u8]) -> bool {
    let (mut t, mut p) = (0usize, 0usize);
    // Where to resume after the most recent `*`: (token index after it, path index it took up to).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if t < tokens.len() {
            match &tokens[t] {
                Token::Any => {
                    t += 1;
                    if t == tokens.len() {
                        return true;
                    }
                    star = Some((t, p));
                    continue;
                }
                Token::One => {
                    if p < path.len() {
                        // One character: a whole UTF-8 sequence, not one byte.
                        p += utf8_len(path[p]);
                        p = p.min(path.len());
                        t += 1;
                        continue;
                    }
                }
                Token::Lit(l) => {
                    if path[p..].starts_with(l) {
                        p += l.len();
                        t += 1;
                        continue;
                    }
                }
            }
        } else if p == path.len() {
            return true;
        }
        // Mismatch: let the last `*` take one more character, or fail.
        match star {
            Some((st, sp)) if sp < path.len() => {
                let np = sp + 1;
                star = Some((st, np));
                t = st;
                p = np;
            }
            _ => return false,
        }
    }
}

fn utf8_len(b: u8) -> usize {
    match b {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, path: &str) -> bool {
        Pattern::parse(p).unwrap().matches(path.as_bytes())
    }

    #[test]
    fn cloudfront_semantics() {
        assert!(m("*", "/"));
        assert!(m("*", "/a/b/c"));
        assert!(m("/user/*", "/user/"));
        assert!(m("/user/*", "/user/42/profile"));
        assert!(!m("/user/*", "/user"));
        assert!(!m("/user/*", "/User/1"));
        assert!(m("/images/*.jpg", "/images/a/b.jpg"));
        assert!(!m("/images/*.jpg", "/images/a/b.jpeg"));
        assert!(m("/v?/x", "/v1/x"));
        assert!(!m("/v?/x", "/v10/x"));
        assert!(m("/a*b*c", "/aXbYbZc"));
        assert!(!m("/a*b*c", "/aXbYbZ"));
        assert!(m("images/*", "/images/x"));
        assert!(m("/exact", "/exact"));
        assert!(!m("/exact", "/exact/"));
        assert!(m("/?", "/é"));
    }

    #[test]
    fn bad_patterns() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert!(matches!(
            Pattern::parse("/a b"),
            Err(PatternError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            Pattern::parse("/a#"),
            Err(PatternError::BadChar { .. })
        ));
        assert!(matches!(
            Pattern::parse(&"a".repeat(300)),
            Err(PatternError::TooLong { .. })
        ));
    }

    #[test]
    fn covers() {
        let p = |s| Pattern::parse(s).unwrap();
        assert!(p("*").covers(&p("/x")));
        assert!(p("/user/*").covers(&p("/user/admin/*")));
        assert!(p("/user/*").covers(&p("/user/?")));
        assert!(!p("/user/*").covers(&p("/users")));
        assert!(!p("/user/*/x").covers(&p("/user/a/x")));
    }

    /// Reference matcher: the obvious recursive definition over chars.
    fn reference(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some('*'), _) => reference(&p[1..], s) || (!s.is_empty() && reference(p, &s[1..])),
            (Some('?'), Some(_)) => reference(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => reference(&p[1..], &s[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reference(p in "/[ab*?/]{0,8}", s in "/[abc/]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let sc: Vec<char> = s.chars().collect();
            prop_assert_eq!(Pattern::parse(&p).unwrap().matches(s.as_bytes()), reference(&pc, &sc));
        }

        #[test]
        fn literal_prefix_is_necessary(p in "/[ab*?/]{0,8}", s in "/[ab/]{0,10}") {
            let pat = Pattern::parse(&p).unwrap();
            if pat.matches(s.as_bytes()) {
                prop_assert!(s.as_bytes().starts_with(pat.literal_prefix()));
            }
        }
    }
}
