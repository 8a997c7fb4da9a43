//! `GET /v1/shadow[/{route}]`: shadow comparison counts and recent mismatches per route, read
//! from the proxy's in-memory results (bounded: the last few mismatches per route).

use std::collections::BTreeMap;

use super::types::{RouteShadowView, ShadowView};
use crate::proxy::shadow;
use crate::routing::table::RouteTable;

/// The results of every shadowed route, or only of `route` when given; `None` when `route`
/// names no route that has had a `shadow` option.
pub fn view(live: &RouteTable, route: Option<&str>) -> Option<ShadowView> {
    let upstream_of: BTreeMap<&str, String> = live
        .routes
        .iter()
        .filter_map(|r| {
            let s = r.shadow.as_ref()?;
            let up = live.upstreams.get(s.upstream)?;
            Some((&*r.id, up.name.to_string()))
        })
        .collect();
    let mut routes = BTreeMap::new();
    for (id, st) in shadow::routes() {
        if route.is_some_and(|r| r != id) {
            continue;
        }
        let counts = st.counts();
        let get = |k: &str| counts.get(k).copied().unwrap_or(0);
        let compared =
            get("match") + get("status_mismatch") + get("header_mismatch") + get("body_mismatch");
        routes.insert(
            id.clone(),
            RouteShadowView {
                upstream: upstream_of.get(id.as_str()).cloned(),
                match_rate: (compared > 0).then(|| get("match") as f64 / compared as f64),
                counts,
                recent: st.recent(),
            },
        );
    }
    if route.is_some() && routes.is_empty() {
        return None;
    }
    Some(ShadowView {
        inflight: shadow::inflight() as u64,
        max_inflight: live.proxy.shadow_max_inflight as u64,
        routes,
    })
}
