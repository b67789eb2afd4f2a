//! The end of a leadership term, as the leader loops see it: every loop that runs while this
//! replica leads gets a [`TermEnd`] and must return soon after it resolves. The supervisor in
//! `crate::run` makes and ends terms.

use tokio::sync::watch;

/// Resolves when the current leadership term ends (Lease lost, or shutdown). Every leader
/// loop must return soon after this resolves.
#[derive(Clone)]
pub struct TermEnd(watch::Receiver<bool>);

impl TermEnd {
    /// A new term and its end: sending `true` ends it (the supervisor's, and a test's).
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|ended| *ended).await;
    }

    pub fn has_ended(&self) -> bool {
        *self.0.borrow()
    }
}
