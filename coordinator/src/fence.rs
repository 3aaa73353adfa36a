//! The leader's fence: the etcd key it won the election with and that key's create revision.
//!
//! Why stale writes die: every write of a leader is one etcd transaction whose first clause
//! compares the leader key's create revision with the fence's. A deposed leader — paused, cut
//! off, or just slow to notice its lease expired — still holds the old revision; the key is
//! gone or was created again by the new leader with a higher revision, so the compare fails
//! and nothing of the write is applied. The same revision is the *epoch* stamped on leases, so
//! agents ignore a deposed leader's leases too. One value, handed to the store; the engine
//! reads the epoch from the store.

/// A won election's fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    key: Vec<u8>,
    revision: i64,
}

impl Fence {
    pub fn new(key: Vec<u8>, revision: i64) -> Fence {
        Fence { key, revision }
    }

    /// The leader key the store's writes are conditional on.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Its create revision: the value the compare expects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The epoch stamped on leases: newer leaders have larger epochs.
    pub fn epoch(&self) -> u64 {
        u64::try_from(self.revision).unwrap_or(0)
    }

    /// Whether a write fenced by this fence would pass against the leader key as it is now
    /// (`None`: the key is gone). What etcd's compare decides, stated here for tests and logs.
    pub fn admits(&self, current_create_revision: Option<i64>) -> bool {
        current_create_revision == Some(self.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_leader_has_a_larger_epoch() {
        let old = Fence::new(b"/factotum/leader/a".to_vec(), 41);
        let new = Fence::new(b"/factotum/leader/b".to_vec(), 57);
        assert!(new.epoch() > old.epoch());
        assert_eq!(Fence::new(vec![], -1).epoch(), 0);
    }

    #[test]
    fn only_the_current_leader_key_admits_a_write() {
        let fence = Fence::new(b"k".to_vec(), 41);
        assert!(fence.admits(Some(41)));
        assert!(!fence.admits(Some(57)), "re-created by another leader");
        assert!(!fence.admits(None), "the lease expired and the key is gone");
    }
}
