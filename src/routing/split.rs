//! A route's distribution: weighted arms (the canary split) plus an ordered list of fallbacks.
//! Split and fallback are one concept: for each request the distribution yields an order of
//! preference over upstreams, and the proxy walks it.

/// Buckets per route: weights are in hundredths of a percent, so 0.01% is one bucket.
pub const BUCKETS: u32 = 10_000;

/// One arm of a split: requests whose bucket falls in `lo..hi` go to `upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arm {
    /// Index into the table's upstreams.
    pub upstream: usize,
    /// Weight in buckets (hundredths of a percent).
    pub weight: u32,
    lo: u32,
    hi: u32,
}

/// Weighted arms plus fallbacks, compiled once per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    arms: Vec<Arm>,
    /// Tried in order after the chosen arm; never contains an arm's upstream twice.
    pub fallbacks: Vec<usize>,
}

impl Distribution {
    /// Builds a distribution from `(upstream, weight in buckets)` pairs whose weights sum to
    /// [`BUCKETS`]. Arms are laid out on the bucket line in the order given; the compiler passes
    /// them sorted by upstream name, so the layout depends neither on how the file orders them
    /// nor on upstream indexes, and every proxy instance lays out the same split the same way.
    ///
    /// Each arm owns exactly its weight in buckets (weight 0 owns none and moves no boundary).
    /// A sticky key's bucket is fixed, so its arm changes only when a boundary crosses it:
    /// - **Two arms** (the canary case): one boundary. Raising one arm by `d` buckets moves
    ///   exactly `d` buckets, all from the lowered arm into the raised one, whichever name sorts
    ///   first; clients never move the other way (`two_arms_monotone`).
    /// - **Three or more arms**: moving weight between two arms that are *adjacent in name
    ///   order* moves clients only from the lowered into the raised one, as above
    ///   (`adjacent_arms_monotone`). Moving weight between arms with others *between* them
    ///   slides those middle arms along the line: each keeps its size, but up to `d` of its
    ///   buckets pass to its neighbour on the raised side and as many arrive from the lowered
    ///   side. So with `{a, b, c}`, raising `a` and lowering `c` moves some `b` clients into
    ///   `a` and some `c` clients into `b` (`non_adjacent_moves_slide_the_middle`). To ramp
    ///   monotonically with three arms, trade weight between adjacent names, or name the arms so
    ///   that the two being traded sort next to each other.
    pub fn new(weights: &[(usize, u32)], fallbacks: Vec<usize>) -> Distribution {
        let mut lo = 0;
        let arms = weights
            .iter()
            .map(|&(upstream, weight)| {
                let arm = Arm {
                    upstream,
                    weight,
                    lo,
                    hi: lo + weight,
                };
                lo += weight;
                arm
            })
            .collect();
        Distribution { arms, fallbacks }
    }

    /// The arms in bucket order.
    pub fn arms(&self) -> &[Arm] {
        &self.arms
    }

    /// The upstream owning `bucket` (`0..BUCKETS`). Weight-0 arms own nothing.
    pub fn pick(&self, bucket: u32) -> usize {
        let b = bucket % BUCKETS;
        for arm in &self.arms {
            if b < arm.hi {
                return arm.upstream;
            }
        }
        // Unreachable when weights sum to BUCKETS; stay total anyway.
        self.arms.last().map(|a| a.upstream).unwrap_or(0)
    }

    /// True when `upstream` is one of the arms or fallbacks (the override header may pick it).
    pub fn contains(&self, upstream: usize) -> bool {
        self.arms.iter().any(|a| a.upstream == upstream) || self.fallbacks.contains(&upstream)
    }

    /// The single arm with all the weight, if there is one.
    pub fn sole(&self) -> Option<usize> {
        self.arms
            .iter()
            .find(|a| a.weight == BUCKETS)
            .map(|a| a.upstream)
    }
}

/// The bucket of a sticky key: a stable 64-bit FNV-1a hash folded onto `0..BUCKETS`. Stable
/// across processes and versions, so every proxy instance puts a client in the same arm.
pub fn bucket_of(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche (splitmix64) so short, similar keys spread evenly.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h % u64::from(BUCKETS)) as u32
}

/// Where the sticky key of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// A cookie's value.
    Cookie(String),
    /// A request header's value (name stored lowercase).
    Header(String),
    /// The client's address (without the port).
    ClientIp,
}

impl StickyKey {
    /// Parses `cookie:NAME`, `header:NAME` or `client_ip`.
    pub fn parse(spec: &str) -> Result<StickyKey, String> {
        let valid = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        };
        match spec.split_once(':') {
            Some(("cookie", name)) if valid(name) => Ok(StickyKey::Cookie(name.to_string())),
            Some(("header", name)) if valid(name) => Ok(StickyKey::Header(name.to_ascii_lowercase())),
            None if spec == "client_ip" => Ok(StickyKey::ClientIp),
            _ => Err(format!(
                "{spec:?} is not a sticky key; expected \"cookie:NAME\", \"header:NAME\" or \"client_ip\""
            )),
        }
    }
}

/// Finds cookie `name` in a `Cookie` header value.
pub fn cookie_value<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        (trim(&pair[..eq]) == name.as_bytes()).then(|| trim(&pair[eq + 1..]))
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_extremes() {
        let d = Distribution::new(&[(0, 0), (1, BUCKETS)], vec![]);
        assert!((0..BUCKETS).all(|b| d.pick(b) == 1));
        let d = Distribution::new(&[(0, BUCKETS), (1, 0)], vec![]);
        assert!((0..BUCKETS).all(|b| d.pick(b) == 0));
        let d = Distribution::new(&[(0, 1000), (1, 9000)], vec![]);
        assert_eq!((0..BUCKETS).filter(|&b| d.pick(b) == 0).count(), 1000);
    }

    #[test]
    fn sticky_specs() {
        assert_eq!(
            StickyKey::parse("cookie:sid"),
            Ok(StickyKey::Cookie("sid".into()))
        );
        assert_eq!(
            StickyKey::parse("header:X-User"),
            Ok(StickyKey::Header("x-user".into()))
        );
        assert_eq!(StickyKey::parse("client_ip"), Ok(StickyKey::ClientIp));
        assert!(StickyKey::parse("cookie:").is_err());
        assert!(StickyKey::parse("ip").is_err());
        assert!(StickyKey::parse("query:x").is_err());
    }

    #[test]
    fn cookies() {
        let h = b"a=1; sid=abc ;b=2";
        assert_eq!(cookie_value(h, "sid"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie_value(h, "c"), None);
        assert_eq!(cookie_value(b"xsid=1", "sid"), None);
    }

    #[test]
    fn buckets_spread() {
        let mut counts = [0u32; 10];
        for i in 0..100_000u32 {
            counts[(bucket_of(format!("user-{i}").as_bytes()) / 1000) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn non_adjacent_moves_slide_the_middle() {
        // a = 0, b = 1, c = 2 in name order; raise a by 1000 and lower c by 1000.
        let before = Distribution::new(&[(0, 1000), (1, 4000), (2, 5000)], vec![]);
        let after = Distribution::new(&[(0, 2000), (1, 4000), (2, 4000)], vec![]);
        let moved = |from, to| {
            (0..BUCKETS)
                .filter(|&k| before.pick(k) == from && after.pick(k) == to)
                .count()
        };
        assert_eq!(moved(1, 0), 1000, "b clients slide into a");
        assert_eq!(moved(2, 1), 1000, "c clients slide into b");
        assert_eq!(moved(2, 0), 0);
    }

    proptest! {
        /// Raising one of two arms never moves a bucket from it to the other, whichever of the
        /// two is laid out first (the new arm's name may sort before or after legacy's).
        #[test]
        fn two_arms_monotone(
            a in 0u32..=BUCKETS,
            b in 0u32..=BUCKETS,
            raised_first in any::<bool>(),
            key in any::<u64>(),
        ) {
            let (lo, hi) = (a.min(b), a.max(b));
            let layout = |w: u32| {
                if raised_first {
                    Distribution::new(&[(0, w), (1, BUCKETS - w)], vec![])
                } else {
                    Distribution::new(&[(1, BUCKETS - w), (0, w)], vec![])
                }
            };
            let (before, after) = (layout(lo), layout(hi));
            let bucket = bucket_of(&key.to_le_bytes());
            if before.pick(bucket) == 0 {
                prop_assert_eq!(after.pick(bucket), 0);
            }
            // And exactly hi - lo buckets changed arm.
            let changed = (0..BUCKETS).filter(|&k| before.pick(k) != after.pick(k)).count();
            prop_assert_eq!(changed as u32, hi - lo);
        }

        /// With three or more arms, moving weight between two arms adjacent in the layout
        /// moves buckets only from the lowered arm into the raised one.
        #[test]
        fn adjacent_arms_monotone(
            w in proptest::collection::vec(0u32..2000, 3..6),
            pick in any::<prop::sample::Index>(),
            d in 0u32..3000,
            up_is_left in any::<bool>(),
        ) {
            let total: u32 = w.iter().sum();
            let mut before: Vec<(usize, u32)> = w.iter().copied().enumerate().collect();
            let last = before.len() - 1;
            before[last].1 += BUCKETS - total;
            let j = pick.index(before.len() - 1);
            let (up, down) = if up_is_left { (j, j + 1) } else { (j + 1, j) };
            let d = d.min(before[down].1);
            let mut after = before.clone();
            after[up].1 += d;
            after[down].1 -= d;
            let (b, a) = (Distribution::new(&before, vec![]), Distribution::new(&after, vec![]));
            for k in 0..BUCKETS {
                let (x, y) = (b.pick(k), a.pick(k));
                prop_assert!(x == y || (x == down && y == up), "bucket {} moved {} -> {}", k, x, y);
            }
        }

        /// Each arm owns exactly its weight in buckets.
        #[test]
        fn exact_shares(w in proptest::collection::vec(0u32..4000, 1..5)) {
            let total: u32 = w.iter().sum();
            prop_assume!(total <= BUCKETS);
            let mut weights: Vec<(usize, u32)> = w.iter().copied().enumerate().collect();
            weights.push((w.len(), BUCKETS - total));
            let d = Distribution::new(&weights, vec![]);
            for &(u, wt) in &weights {
                prop_assert_eq!((0..BUCKETS).filter(|&b| d.pick(b) == u).count() as u32, wt);
            }
        }
    }
}
