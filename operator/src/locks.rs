//! Locks that do not spread a panic. A std lock is poisoned when a thread panics holding it;
//! `lock().expect(..)` then panics every later user too, so one bad pass would take down
//! every loop sharing the lock (the samplers, the feedback pass, the actuators). The data
//! behind these locks is plain bookkeeping that each pass rewrites, so it stays usable: take
//! it anyway, and the supervisor (`crate::run`) deals with the loop that panicked.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_panic_holding_the_lock_does_not_spread() {
        let book = Arc::new(Mutex::new(vec![1]));
        let b = book.clone();
        let panicked = std::thread::spawn(move || {
            let mut g = b.lock().unwrap();
            g.push(2);
            panic!("a pass panics holding the book");
        })
        .join();
        assert!(panicked.is_err());
        assert!(book.is_poisoned());
        lock(&book).push(3);
        assert_eq!(*lock(&book), vec![1, 2, 3]);
        let rw = Arc::new(RwLock::new(0));
        let r = rw.clone();
        let _ = std::thread::spawn(move || {
            let _g = r.write().unwrap();
            panic!("poison");
        })
        .join();
        *write(&rw) += 1;
        assert_eq!(*read(&rw), 1);
    }
}
