//! The match index: routes are filed under their host selector and, within it, in a byte trie
//! keyed on the pattern's literal prefix. A lookup visits only the routes whose prefix the path
//! starts with, so a table of 10,000 routes costs about what a table of 10 does, while the
//! lowest-index (first in file order) match still wins.

use std::collections::HashMap;

/// Byte trie of literal prefixes; each node lists the routes whose prefix ends there.
#[derive(Debug, Default, Clone)]
pub(crate) struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Default, Clone)]
struct Node {
    /// Sorted by byte for binary search.
    edges: Vec<(u8, u32)>,
    routes: Vec<u32>,
}

impl Trie {
    pub(crate) fn insert(&mut self, prefix: &[u8], route: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut n = 0usize;
        for &b in prefix {
            n = match self.nodes[n].edges.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => self.nodes[n].edges[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len() as u32;
                    self.nodes.push(Node::default());
                    self.nodes[n].edges.insert(i, (b, id));
                    id as usize
                }
            };
        }
        self.nodes[n].routes.push(route);
    }

    /// Calls `f` with every route whose prefix `path` starts with, shortest prefix first.
    #[inline]
    pub(crate) fn walk(&self, path: &[u8], mut f: impl FnMut(u32)) {
        let Some(mut node) = self.nodes.first() else {
            return;
        };
        node.routes.iter().for_each(|&r| f(r));
        for b in path {
            match node.edges.binary_search_by_key(b, |e| e.0) {
                Ok(i) => node = &self.nodes[node.edges[i].1 as usize],
                Err(_) => return,
            }
            node.routes.iter().for_each(|&r| f(r));
        }
    }
}

/// Which hosts a route answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSelector {
    /// `example.com` (stored lowercase).
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (stored as `example.com`).
    Suffix(String),
}

impl HostSelector {
    /// Parses `name` or `*.name`; `None` if it is not a valid host name.
    pub fn parse(s: &str) -> Option<HostSelector> {
        let s = s.to_ascii_lowercase();
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, s),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        valid.then_some(if wild {
            HostSelector::Suffix(name)
        } else {
            HostSelector::Exact(name)
        })
    }

    /// True when this selector accepts every host `other` accepts.
    pub fn covers(&self, other: &HostSelector) -> bool {
        match (self, other) {
            (HostSelector::Exact(a), HostSelector::Exact(b)) => a == b,
            (HostSelector::Suffix(a), HostSelector::Exact(b)) => b
                .strip_suffix(a.as_str())
                .is_some_and(|r| r.ends_with('.') && r.len() > 1),
            (HostSelector::Suffix(a), HostSelector::Suffix(b)) => {
                a == b || b.strip_suffix(a.as_str()).is_some_and(|r| r.ends_with('.'))
            }
            (HostSelector::Exact(_), HostSelector::Suffix(_)) => false,
        }
    }
}

/// The index over a whole table.
#[derive(Debug, Default, Clone)]
pub struct Matcher {
    any_host: Trie,
    exact: HashMap<Box<str>, Trie>,
    suffix: HashMap<Box<str>, Trie>,
}

impl Matcher {
    /// Files route `index` (its position in the table) under its hosts and literal prefix.
    pub fn insert(&mut self, index: u32, hosts: &[HostSelector], prefix: &[u8]) {
        if hosts.is_empty() {
            self.any_host.insert(prefix, index);
        }
        for h in hosts {
            match h {
                HostSelector::Exact(n) => self
                    .exact
                    .entry(n.as_str().into())
                    .or_default()
                    .insert(prefix, index),
                HostSelector::Suffix(n) => self
                    .suffix
                    .entry(n.as_str().into())
                    .or_default()
                    .insert(prefix, index),
            }
        }
    }

    /// The lowest route index among the candidates for `host` (lowercase, no port) and `path`
    /// for which `accept` holds. `accept` does the full check (pattern, method).
    pub fn first(
        &self,
        host: &str,
        path: &[u8],
        mut accept: impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        let mut best: Option<u32> = None;
        let mut consider = |r: u32| {
            if best.is_none_or(|b| r < b) && accept(r) {
                best = Some(r);
            }
        };
        self.any_host.walk(path, &mut consider);
        if !self.exact.is_empty() {
            if let Some(t) = self.exact.get(host) {
                t.walk(path, &mut consider);
            }
        }
        if !self.suffix.is_empty() {
            // Every proper dot-suffix of the host: a.b.example.com -> b.example.com, example.com, com.
            let mut rest = host;
            while let Some(i) = rest.find('.') {
                rest = &rest[i + 1..];
                if let Some(t) = self.suffix.get(rest) {
                    t.walk(path, &mut consider);
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_selectors() {
        let e = HostSelector::parse("API.example.com").unwrap();
        assert_eq!(e, HostSelector::Exact("api.example.com".into()));
        let w = HostSelector::parse("*.example.com").unwrap();
        assert!(w.covers(&e));
        assert!(!e.covers(&w));
        assert!(!w.covers(&HostSelector::Exact("example.com".into())));
        assert!(w.covers(&HostSelector::parse("*.a.example.com").unwrap()));
        assert!(HostSelector::parse("bad host").is_none());
        assert!(HostSelector::parse("*.").is_none());
        assert!(HostSelector::parse("a..b").is_none());
    }

    #[test]
    fn trie_walk_lists_prefixes_only() {
        let mut t = Trie::default();
        t.insert(b"/user/", 0);
        t.insert(b"/", 1);
        t.insert(b"/users", 2);
        let mut seen = vec![];
        t.walk(b"/user/42", |r| seen.push(r));
        assert_eq!(seen, vec![1, 0]);
    }
}
