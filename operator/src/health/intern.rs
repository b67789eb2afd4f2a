//! One shared copy of each value many cached objects hold alike.
//!
//! At 10,000 pods most of what a pod carries is the same for every pod of its workload (the
//! namespace, the labels, the owner, the tolerations) or for every pod on its node (the node
//! name). A [`Pool`] hands out an `Arc` of the one copy it keeps; a value no object holds any
//! more is dropped by the next sweep, so the pool stays the size of what is live.

use std::{collections::HashSet, hash::Hash, sync::Arc};

/// The values handed out, each kept once.
#[derive(Debug)]
pub struct Pool<T: ?Sized> {
    shared: HashSet<Arc<T>, foldhash::fast::RandomState>,
    /// How many values the last sweep kept: the next sweep comes once the pool has doubled.
    kept: usize,
}

impl<T: ?Sized> Default for Pool<T> {
    fn default() -> Self {
        Self {
            shared: HashSet::default(),
            kept: 0,
        }
    }
}

/// Pools no smaller than this are swept (below it, a sweep costs more than it frees).
const SWEEP_FLOOR: usize = 256;

impl<T: ?Sized + Hash + Eq> Pool<T> {
    /// Keeps `shared`, sweeping first when the pool has doubled since the last sweep.
    fn add(&mut self, shared: Arc<T>) -> Arc<T> {
        if self.shared.len() >= (2 * self.kept).max(SWEEP_FLOOR) {
            // Drops the values only the pool still holds.
            self.shared.retain(|v| Arc::strong_count(v) > 1);
            self.kept = self.shared.len();
        }
        self.shared.insert(Arc::clone(&shared));
        shared
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shared.len()
    }
}

impl Pool<str> {
    /// The shared copy of `value`.
    pub fn share(&mut self, value: &str) -> Arc<str> {
        match self.shared.get(value) {
            Some(shared) => Arc::clone(shared),
            None => self.add(Arc::from(value)),
        }
    }
}

impl<T: Hash + Eq> Pool<T> {
    /// The shared copy of `value` (dropped when there is one already).
    pub fn share_owned(&mut self, value: T) -> Arc<T> {
        match self.shared.get(&value) {
            Some(shared) => Arc::clone(shared),
            None => self.add(Arc::new(value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy() {
        let mut pool = Pool::<str>::default();
        let a = pool.share("ns");
        let b = pool.share(&String::from("ns"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn values_no_one_holds_are_swept() {
        let mut pool = Pool::<String>::default();
        let held: Vec<Arc<String>> = (0..SWEEP_FLOOR)
            .map(|i| pool.share_owned(i.to_string()))
            .filter(|v| v.len() == 1)
            .collect();
        // Full: the next new value sweeps all but the ten still held.
        pool.share_owned("new".into());
        assert_eq!(pool.len(), held.len() + 1);
        assert_eq!(held.len(), 10);
    }
}
