//! What changed between two tables, per route and per upstream: the history's summaries,
//! `switchyard diff`, and the subjects the files-vs-API rule tracks.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::{RouteFile, TableFile};

/// How an entry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// One route's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteChange {
    pub route: String,
    pub change: ChangeKind,
    /// The route file keys that differ (`split`, `fallback`, `path`, ...); empty when added or
    /// removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Where the route sent traffic before (`new=25 legacy=75, fallback legacy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Where it sends traffic after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// One upstream's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamChange {
    pub upstream: String,
    pub change: ChangeKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// Everything that differs between two tables. Empty when they are equal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub routes: Vec<RouteChange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamChange>,
    /// `[proxy]` changed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub proxy: bool,
    /// The routes kept their contents but not their order (precedence changed).
    #[serde(default, skip_serializing_if = "is_false")]
    pub order: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Summary {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.upstreams.is_empty() && !self.proxy && !self.order
    }

    /// One line for tables: `users: new=25 legacy=75 -> legacy; +orders; -old`.
    pub fn one_line(&self) -> String {
        let mut parts: Vec<String> = self
            .routes
            .iter()
            .map(|c| match c.change {
                ChangeKind::Added => format!("+{}", c.route),
                ChangeKind::Removed => format!("-{}", c.route),
                ChangeKind::Changed => match (&c.before, &c.after) {
                    (Some(b), Some(a)) if b != a => format!("{}: {b} -> {a}", c.route),
                    _ => format!("{}: {}", c.route, c.fields.join(",")),
                },
            })
            .collect();
        for u in &self.upstreams {
            let sign = match u.change {
                ChangeKind::Added => "+",
                ChangeKind::Removed => "-",
                ChangeKind::Changed => "~",
            };
            parts.push(format!("{sign}upstream {}", u.upstream));
        }
        if self.proxy {
            parts.push("~[proxy]".into());
        }
        if self.order {
            parts.push("route order".into());
        }
        if parts.is_empty() {
            "no changes".into()
        } else {
            parts.join("; ")
        }
    }
}

/// A percentage as written, without a useless `.0`.
pub fn pct(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        let s = format!("{p:.2}");
        s.trim_end_matches('0').to_string()
    }
}

/// Where a route sends traffic, in one short phrase: `new=25 legacy=75, fallback legacy`.
pub fn describe_route(r: &RouteFile) -> String {
    let mut s = match (&r.to, &r.split) {
        (Some(t), _) => t.clone(),
        (None, Some(split)) => split
            .iter()
            .map(|(n, p)| format!("{n}={}", pct(*p)))
            .collect::<Vec<_>>()
            .join(" "),
        (None, None) => "nowhere".into(),
    };
    if let Some(f) = &r.fallback {
        s.push_str(", fallback ");
        s.push_str(&f.names().join(" "));
    }
    s
}

/// The keys of a serialized entry that differ (absent and default count as absent).
fn changed_fields<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["*".into()];
    };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.to_string())
        .collect()
}

/// What changed from `a` to `b`. Routes are listed in `b`'s order, then removed routes.
pub fn diff(a: &TableFile, b: &TableFile) -> Summary {
    let old: BTreeMap<&str, &RouteFile> = a.routes.iter().map(|r| (r.id.as_str(), r)).collect();
    let new_ids: BTreeSet<&str> = b.routes.iter().map(|r| r.id.as_str()).collect();
    let mut routes = Vec::new();
    for r in &b.routes {
        match old.get(r.id.as_str()) {
            None => routes.push(RouteChange {
                route: r.id.clone(),
                change: ChangeKind::Added,
                fields: vec![],
                before: None,
                after: Some(describe_route(r)),
            }),
            Some(o) if *o != r => routes.push(RouteChange {
                route: r.id.clone(),
                change: ChangeKind::Changed,
                fields: changed_fields(*o, r),
                before: Some(describe_route(o)),
                after: Some(describe_route(r)),
            }),
            Some(_) => {}
        }
    }
    for r in &a.routes {
        if !new_ids.contains(r.id.as_str()) {
            routes.push(RouteChange {
                route: r.id.clone(),
                change: ChangeKind::Removed,
                fields: vec![],
                before: Some(describe_route(r)),
                after: None,
            });
        }
    }
    let mut upstreams = Vec::new();
    for (name, u) in &b.upstreams {
        match a.upstreams.get(name) {
            None => upstreams.push(UpstreamChange {
                upstream: name.clone(),
                change: ChangeKind::Added,
                fields: vec![],
            }),
            Some(o) if o != u => upstreams.push(UpstreamChange {
                upstream: name.clone(),
                change: ChangeKind::Changed,
                fields: changed_fields(o, u),
            }),
            Some(_) => {}
        }
    }
    for name in a.upstreams.keys() {
        if !b.upstreams.contains_key(name) {
            upstreams.push(UpstreamChange {
                upstream: name.clone(),
                change: ChangeKind::Removed,
                fields: vec![],
            });
        }
    }
    Summary {
        routes,
        upstreams,
        proxy: a.proxy != b.proxy,
        order: order_changed(a, b),
    }
}

/// True when the routes both tables have are in a different relative order.
fn order_changed(a: &TableFile, b: &TableFile) -> bool {
    let common: BTreeSet<&str> = a
        .routes
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| b.routes.iter().any(|r| r.id == *id))
        .collect();
    let seq = |t: &TableFile| -> Vec<String> {
        t.routes
            .iter()
            .filter(|r| common.contains(r.id.as_str()))
            .map(|r| r.id.clone())
            .collect()
    };
    seq(a) != seq(b)
}

/// The subjects that differ between `a` and `b`: `route:ID`, `upstream:NAME`, `proxy`,
/// `order`. The files-vs-API rule records these for every API change.
pub fn subjects(a: &TableFile, b: &TableFile) -> BTreeSet<String> {
    let s = diff(a, b);
    let mut out: BTreeSet<String> = s
        .routes
        .iter()
        .map(|c| format!("route:{}", c.route))
        .collect();
    out.extend(
        s.upstreams
            .iter()
            .map(|u| format!("upstream:{}", u.upstream)),
    );
    if s.proxy {
        out.insert("proxy".into());
    }
    if s.order {
        out.insert("order".into());
    }
    out
}

/// True when `subject` (as from [`subjects`]) is different in `a` and `b`.
pub fn subject_differs(subject: &str, a: &TableFile, b: &TableFile) -> bool {
    if let Some(id) = subject.strip_prefix("route:") {
        let find = |t: &TableFile| t.routes.iter().find(|r| r.id == id).cloned();
        find(a) != find(b)
    } else if let Some(name) = subject.strip_prefix("upstream:") {
        a.upstreams.get(name) != b.upstreams.get(name)
    } else if subject == "proxy" {
        a.proxy != b.proxy
    } else if subject == "order" {
        order_changed(a, b)
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_toml;

    fn t(s: &str) -> TableFile {
        parse_toml("t", s).unwrap()
    }

    const BASE: &str =
        "[upstreams.new]\naddrs=['127.0.0.1:1']\n[upstreams.legacy]\naddrs=['127.0.0.1:2']\n\
        [[routes]]\nid='users'\npath='/u/*'\nsplit={new=25,legacy=75}\nfallback='legacy'\n\
        [[routes]]\nid='orders'\npath='/o/*'\nto='new'\n";

    #[test]
    fn per_route_summary() {
        let a = t(BASE);
        let b = t(&BASE
            .replace("split={new=25,legacy=75}\nfallback='legacy'", "to='legacy'")
            .replace(
                "id='orders'\npath='/o/*'\nto='new'",
                "id='static'\npath='/s/*'\nto='legacy'",
            ));
        let s = diff(&a, &b);
        assert_eq!(s.routes.len(), 3, "{s:?}");
        assert_eq!(s.routes[0].route, "users");
        assert_eq!(s.routes[0].fields, ["fallback", "split", "to"]);
        assert_eq!(
            s.routes[0].before.as_deref(),
            Some("legacy=75 new=25, fallback legacy")
        );
        assert_eq!(s.routes[0].after.as_deref(), Some("legacy"));
        assert_eq!(s.routes[1].change, ChangeKind::Added);
        assert_eq!(s.routes[2].change, ChangeKind::Removed);
        assert_eq!(
            s.one_line(),
            "users: legacy=75 new=25, fallback legacy -> legacy; +static; -orders"
        );
        assert!(diff(&a, &a).is_empty());
        assert_eq!(diff(&a, &a).one_line(), "no changes");
        assert_eq!(
            subjects(&a, &b),
            ["route:orders", "route:static", "route:users"]
                .map(String::from)
                .into()
        );
        assert!(subject_differs("route:users", &a, &b));
        assert!(!subject_differs("upstream:new", &a, &b));
    }

    #[test]
    fn order_and_upstreams() {
        let a = t(BASE);
        let mut b = a.clone();
        b.routes.reverse();
        b.upstreams.get_mut("new").unwrap().addrs = vec!["127.0.0.1:9".into()];
        let s = diff(&a, &b);
        assert!(s.routes.is_empty() && s.order);
        assert_eq!(s.upstreams[0].fields, ["addrs"]);
        assert_eq!(
            subjects(&a, &b),
            ["order", "upstream:new"].map(String::from).into()
        );
    }

    #[test]
    fn percentages() {
        assert_eq!(pct(25.0), "25");
        assert_eq!(pct(12.5), "12.5");
        assert_eq!(pct(0.01), "0.01");
    }
}
