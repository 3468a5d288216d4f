//! What decoded messages need across messages: the latest Relation per table, and unchanged TOAST
//! values filled from the old tuple of the same change.

use super::*;

/// The latest [`Relation`] message per table OID.
///
/// pgoutput sends a Relation before a table's first change in a session and again after each
/// schema change, so the newest message always describes the tuples that follow it.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    /// Relations by OID.
    relations: HashMap<u32, Arc<Relation>>,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `relation`, replacing any older schema for its OID, and returns the shared copy.
    pub fn insert(&mut self, relation: Relation) -> Arc<Relation> {
        let relation = Arc::new(relation);
        self.relations.insert(relation.oid, Arc::clone(&relation));
        relation
    }

    /// The latest schema for `oid`.
    pub fn get(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }

    /// Number of cached relations.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// True when no relation is cached.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }

    /// Forgets everything, e.g. when a new replication session starts.
    pub fn clear(&mut self) {
        self.relations.clear();
    }
}

/// Replaces [`Datum::UnchangedToast`] in `new` by the old tuple's value at the same index, where the
/// old tuple holds one.
///
/// A full old tuple holds every column, so any non-TOAST old datum (NULL included) is copied. A key
/// tuple holds values only for the replica identity columns (the rest are NULL placeholders, and key
/// columns can't be NULL), so only its text or binary values are copied. Datums that stay
/// `UnchangedToast` mean the value is unknown to us; callers must not read them as NULL.
pub fn fill_unchanged_toast(new: &mut Tuple, old: Option<&OldTuple>) {
    let Some(old) = old else { return };
    let (old, full) = match old {
        OldTuple::Full(t) => (t, true),
        OldTuple::Key(t) => (t, false),
    };
    for (slot, previous) in new.0.iter_mut().zip(&old.0) {
        if *slot != Datum::UnchangedToast {
            continue;
        }
        let usable = match previous {
            Datum::Text(_) | Datum::Binary(_) => true,
            Datum::Null => full,
            Datum::UnchangedToast => false,
        };
        if usable {
            *slot = previous.clone();
        }
    }
}
