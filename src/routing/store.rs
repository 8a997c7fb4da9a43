//! The live table: an `ArcSwap` that publishers replace whole and requests read once.

use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::table::RouteTable;

/// Holds the live [`RouteTable`]. Readers never block; publishers are serialized so versions
/// only grow and a check-then-publish (the admin API's `If-Match`) cannot interleave.
pub struct TableStore {
    current: ArcSwap<RouteTable>,
    publish: Mutex<()>,
}

impl TableStore {
    /// A store serving `initial` as is (its version is kept: a restart resumes its numbering).
    pub fn new(initial: RouteTable) -> TableStore {
        TableStore {
            current: ArcSwap::from_pointee(initial),
            publish: Mutex::new(()),
        }
    }

    /// The table a request uses from start to end.
    #[inline]
    pub fn load(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// The live version.
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// Makes `table` live with the next version number and returns it as published.
    pub fn publish(&self, table: RouteTable) -> Arc<RouteTable> {
        self.publish_if(|_, _| Ok::<_, std::convert::Infallible>(table))
            .unwrap_or_else(|e| match e {})
    }

    /// Builds the next table from the live one while holding the publish lock, so nothing is
    /// published between the read and the swap. An `Err` publishes nothing. `build` also runs
    /// any side effect that must commit with the swap (the history write), after which the swap
    /// cannot fail.
    pub fn publish_if<E>(
        &self,
        build: impl FnOnce(&Arc<RouteTable>, u64) -> Result<RouteTable, E>,
    ) -> Result<Arc<RouteTable>, E> {
        let _guard = self.publish.lock();
        let live = self.current.load_full();
        let mut next = build(&live, live.version + 1)?;
        next.version = live.version + 1;
        let next = Arc::new(next);
        self.current.store(next.clone());
        Ok(next)
    }

    /// Makes the table `build` returns live as `version`, if that is newer than the live one
    /// (a version another proxy of a fleet committed). `Ok(None)`: the live table is already
    /// at or past `version`, nothing built. An `Err` publishes nothing.
    pub fn publish_newer<E>(
        &self,
        version: u64,
        build: impl FnOnce(&Arc<RouteTable>) -> Result<RouteTable, E>,
    ) -> Result<Option<Arc<RouteTable>>, E> {
        let _guard = self.publish.lock();
        let live = self.current.load_full();
        if live.version >= version {
            return Ok(None);
        }
        let mut next = build(&live)?;
        next.version = version;
        let next = Arc::new(next);
        self.current.store(next.clone());
        Ok(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_and_old_snapshots_survive() {
        let s = TableStore::new(RouteTable::empty());
        let old = s.load();
        assert_eq!(s.publish(RouteTable::empty()).version, 1);
        assert_eq!(s.publish(RouteTable::empty()).version, 2);
        assert_eq!(old.version, 0);
        let r: Result<_, &str> = s.publish_if(|_, _| Err("no"));
        assert!(r.is_err());
        assert_eq!(s.version(), 2);
        assert_eq!(
            s.publish_newer(7, |_| Ok::<_, ()>(RouteTable::empty()))
                .unwrap()
                .map(|t| t.version),
            Some(7)
        );
        assert!(s
            .publish_newer(5, |_| Ok::<_, ()>(RouteTable::empty()))
            .unwrap()
            .is_none());
        assert_eq!(s.version(), 7);
    }
}
