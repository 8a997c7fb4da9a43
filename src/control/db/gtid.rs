//! GTID positions as the servers print them, parsed for showing and counting. Set arithmetic
//! (subset, subtract) is the server's job (`GTID_SUBSET`, `GTID_SUBTRACT`); what is done here is
//! reading MariaDB's per-domain positions and counting MySQL's intervals.

use std::collections::BTreeMap;

/// A MariaDB GTID position: for each replication domain, the last GTID (`domain-server-seq`).
/// A list with several GTIDs in one domain (as `gtid_binlog_pos` can print) keeps the highest
/// sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MariaPos {
    /// domain -> (server id, sequence number)
    pub domains: BTreeMap<u32, (u32, u64)>,
}

/// A GTID string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GTID {text:?}: {why}")]
pub struct ParseError {
    pub text: String,
    pub why: &'static str,
}

impl MariaPos {
    /// Parses `0-1-100,1-2-5` (empty text: the empty position).
    pub fn parse(text: &str) -> Result<MariaPos, ParseError> {
        let err = |why| ParseError {
            text: text.to_string(),
            why,
        };
        let mut domains: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split('-');
            let (Some(d), Some(s), Some(n), None) = (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(err("expected domain-server-sequence"));
            };
            let d: u32 = d.parse().map_err(|_| err("domain is not a number"))?;
            let s: u32 = s.parse().map_err(|_| err("server id is not a number"))?;
            let n: u64 = n.parse().map_err(|_| err("sequence is not a number"))?;
            let e = domains.entry(d).or_insert((s, n));
            if n > e.1 {
                *e = (s, n);
            }
        }
        Ok(MariaPos { domains })
    }

    /// True when no transaction was ever recorded.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// How many transactions `self` still lacks to reach `ahead`, summed over domains
    /// (sequence numbers are dense within a domain under `gtid_strict_mode`).
    pub fn behind(&self, ahead: &MariaPos) -> u64 {
        ahead
            .domains
            .iter()
            .map(|(d, &(_, n))| {
                let mine = self.domains.get(d).map(|&(_, m)| m).unwrap_or(0);
                n.saturating_sub(mine)
            })
            .sum()
    }

    /// GTIDs of `self` that `source` cannot have executed: a domain the source never had, a
    /// higher sequence than the source's, or the same sequence from another server.
    pub fn errant_against(&self, source: &MariaPos) -> Vec<String> {
        self.domains
            .iter()
            .filter_map(|(d, &(s, n))| match source.domains.get(d) {
                None => Some(format!("{d}-{s}-{n} (domain {d} unknown on the source)")),
                Some(&(ss, sn)) if n > sn => {
                    Some(format!("{d}-{s}-{n} (the source is at {d}-{ss}-{sn})"))
                }
                Some(&(ss, sn)) if n == sn && s != ss => {
                    Some(format!("{d}-{s}-{n} (the source has {d}-{ss}-{sn})"))
                }
                _ => None,
            })
            .collect()
    }

    /// Domains where `self` is before `start` (the first GTID position still in the source's
    /// binlogs): the transactions between are purged, so replication would fail with 1236.
    pub fn gap_before(&self, start: &MariaPos) -> Vec<String> {
        start
            .domains
            .iter()
            .filter_map(|(d, &(s, n))| {
                let mine = self.domains.get(d).map(|&(_, m)| m).unwrap_or(0);
                (mine < n).then(|| {
                    format!("domain {d}: needs transactions after {d}-?-{mine}, but the oldest binlog starts after {d}-{s}-{n}")
                })
            })
            .collect()
    }
}

impl std::fmt::Display for MariaPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .domains
            .iter()
            .map(|(d, (s, n))| format!("{d}-{s}-{n}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A MySQL GTID set, `uuid:1-5:7,uuid2:1-3`, as intervals per source uuid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MysqlSet {
    /// uuid (lower case) -> inclusive intervals
    pub sources: BTreeMap<String, Vec<(u64, u64)>>,
}

impl MysqlSet {
    /// Parses the server's text (newlines allowed, as `@@gtid_executed` prints them).
    pub fn parse(text: &str) -> Result<MysqlSet, ParseError> {
        let err = |why| ParseError {
            text: text.to_string(),
            why,
        };
        let mut sources: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for part in text.split(',').map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let mut it = part.split(':');
            let uuid = it.next().unwrap_or_default().trim().to_ascii_lowercase();
            if uuid.len() != 36 || uuid.chars().filter(|&c| c == '-').count() != 4 {
                return Err(err("expected uuid:interval[:interval...]"));
            }
            let list = sources.entry(uuid).or_default();
            let mut any = false;
            for iv in it {
                // MySQL 8.3+ tagged GTIDs (`uuid:tag:1-5`): a tag is not a number; skip it.
                if iv.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
                    continue;
                }
                let (a, b) = match iv.split_once('-') {
                    Some((a, b)) => (a, b),
                    None => (iv, iv),
                };
                let a: u64 = a
                    .trim()
                    .parse()
                    .map_err(|_| err("interval start is not a number"))?;
                let b: u64 = b
                    .trim()
                    .parse()
                    .map_err(|_| err("interval end is not a number"))?;
                if a == 0 || b < a {
                    return Err(err("interval must be N or N-M with 1 <= N <= M"));
                }
                list.push((a, b));
                any = true;
            }
            if !any {
                return Err(err("a uuid without intervals"));
            }
        }
        Ok(MysqlSet { sources })
    }

    /// How many transactions the set holds.
    pub fn count(&self) -> u64 {
        self.sources
            .values()
            .flatten()
            .map(|(a, b)| b - a + 1)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_positions() {
        let p = MariaPos::parse("0-1-100,1-2-5,0-3-90").unwrap();
        assert_eq!(p.domains[&0], (1, 100));
        assert_eq!(p.to_string(), "0-1-100,1-2-5");
        assert!(MariaPos::parse("").unwrap().is_empty());
        assert!(MariaPos::parse("0-1").is_err());
        assert!(MariaPos::parse("a-1-2").is_err());
        let target = MariaPos::parse("0-1-95").unwrap();
        assert_eq!(target.behind(&p), 5 + 5);
        assert_eq!(p.behind(&target), 0);
        assert!(target.errant_against(&p).is_empty());
        let errant = MariaPos::parse("0-2-101,7-2-1").unwrap().errant_against(&p);
        assert_eq!(errant.len(), 2, "{errant:?}");
        let same_seq = MariaPos::parse("0-2-100").unwrap().errant_against(&p);
        assert_eq!(same_seq.len(), 1, "{same_seq:?}");
        // Oldest binlog starts after 0-1-50: a replica at 0-1-40 has a gap, at 0-1-50 none.
        let start = MariaPos::parse("0-1-50").unwrap();
        assert_eq!(
            MariaPos::parse("0-1-40").unwrap().gap_before(&start).len(),
            1
        );
        assert!(MariaPos::parse("0-1-50")
            .unwrap()
            .gap_before(&start)
            .is_empty());
        assert_eq!(MariaPos::default().gap_before(&start).len(), 1);
        assert!(MariaPos::default()
            .gap_before(&MariaPos::default())
            .is_empty());
    }

    #[test]
    fn mysql_sets() {
        let s = MysqlSet::parse(
            "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:7,\n4f2b1c7e-0000-11e1-9e33-c80aa9429562:1-3",
        )
        .unwrap();
        assert_eq!(s.count(), 5 + 1 + 3);
        assert!(s
            .sources
            .contains_key("3e11fa47-71ca-11e1-9e33-c80aa9429562"));
        assert!(MysqlSet::parse("").unwrap().is_empty());
        assert!(MysqlSet::parse("nope:1-2").is_err());
        assert!(MysqlSet::parse("3e11fa47-71ca-11e1-9e33-c80aa9429562:5-2").is_err());
        assert!(MysqlSet::parse("3e11fa47-71ca-11e1-9e33-c80aa9429562").is_err());
        let tagged = MysqlSet::parse("3e11fa47-71ca-11e1-9e33-c80aa9429562:tag:1-2").unwrap();
        assert_eq!(tagged.count(), 2);
    }
}
