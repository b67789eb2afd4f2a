//! Pending pod writes, at most one in flight per pod and the latest one wins.
//!
//! A kubelet writes each pod's status on its own, so thousands of pods are never written one
//! after another (at the scale bed's 10,000 pods that took minutes). The pod loop queues a
//! write per pod here and runs [`WRITERS`] of them at a time; a newer write for a pod that is
//! still queued replaces the older one, and one for a pod being written waits for it.

use std::collections::{HashMap, HashSet, VecDeque};

/// Pod writes in flight at once.
pub const WRITERS: usize = 32;

#[derive(Debug)]
pub struct WriteQueue<J> {
    /// Pods with a queued write and none in flight, oldest first; each pod at most once.
    ready: VecDeque<String>,
    /// The latest queued write of each pod.
    queued: HashMap<String, J>,
    /// Pods with a write in flight.
    busy: HashSet<String>,
}

impl<J> Default for WriteQueue<J> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            queued: HashMap::new(),
            busy: HashSet::new(),
        }
    }
}

impl<J> WriteQueue<J> {
    /// Queues `job` for `key`, replacing a write still queued for it.
    pub fn push(&mut self, key: String, job: J) {
        if self.queued.insert(key.clone(), job).is_none() && !self.busy.contains(&key) {
            self.ready.push_back(key);
        }
    }

    /// The next write to start; its pod is busy until [`WriteQueue::done`].
    pub fn start(&mut self) -> Option<(String, J)> {
        let key = self.ready.pop_front()?;
        let job = self.queued.remove(&key)?;
        self.busy.insert(key.clone());
        Some((key, job))
    }

    /// The write of `key` finished; a write queued for it meanwhile becomes ready.
    pub fn done(&mut self, key: &str) {
        self.busy.remove(key);
        if self.queued.contains_key(key) {
            self.ready.push_back(key.to_string());
        }
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_write_wins_and_a_busy_pod_waits_for_its_write() {
        let mut q = WriteQueue::default();
        q.push("a".into(), 1);
        q.push("b".into(), 1);
        q.push("a".into(), 2);
        assert_eq!(q.start(), Some(("a".into(), 2)));
        q.push("a".into(), 3);
        assert_eq!(q.start(), Some(("b".into(), 1)));
        assert_eq!(q.start(), None, "a is still being written");
        q.done("a");
        assert_eq!(q.start(), Some(("a".into(), 3)));
        q.done("a");
        q.done("b");
        assert_eq!((q.start(), q.len()), (None, 0));
    }
}
