//! What one request (or one stretch of requests) did to a session, per key,
//! and how to replay it onto a session someone else changed meanwhile.
//!
//! This is what replaces ASP.NET's per-session lock. Instead of making the
//! second request wait, both run; the one that commits second finds the
//! stored version moved, re-reads, and replays its own *changes* (not its
//! whole copy) onto what is there now:
//!
//! * an increment adds to whatever the value is now, so two concurrent
//!   `incr("n", 1)` make `n` grow by 2;
//! * a set or remove of a key nobody else touched simply applies;
//! * a set or remove of a key the other side changed to something else is a
//!   *conflict*: the later writer wins for that key, and the key is reported,
//!   so no update is ever lost silently.
//!
//! Each key keeps the value it had before the first change (`base`): that is
//! how a replay tells "the other side changed this key too" from "it is still
//! what we read".

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The net effect on one key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// Set to a value (`Some`) or removed (`None`).
    Assign(Option<Value>),
    /// Only increments happened: add this much to whatever the value is.
    Add(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct KeyChange {
    /// The value before the first change recorded here.
    base: Option<Value>,
    change: Change,
}

/// Per-key net changes, in key order (deterministic conflict lists).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ChangeSet {
    keys: BTreeMap<String, KeyChange>,
}

impl ChangeSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Records `key := value` (or removal); `current` is the value just
    /// before this change.
    pub(crate) fn assign(&mut self, key: &str, current: Option<&Value>, value: Option<Value>) {
        match self.keys.get_mut(key) {
            Some(entry) => entry.change = Change::Assign(value),
            None => {
                self.keys.insert(
                    key.to_owned(),
                    KeyChange {
                        base: current.cloned(),
                        change: Change::Assign(value),
                    },
                );
            }
        }
    }

    /// Records `key += by`; `current` is the value just before, and `after`
    /// the value the caller computed (kept when an earlier assignment exists,
    /// since then the increment is folded into it).
    pub(crate) fn add(&mut self, key: &str, current: Option<&Value>, by: i64, after: i64) {
        match self.keys.get_mut(key) {
            Some(entry) => {
                entry.change = match &entry.change {
                    Change::Assign(_) => Change::Assign(Some(Value::from(after))),
                    Change::Add(n) => Change::Add(n.saturating_add(by)),
                }
            }
            None => {
                self.keys.insert(
                    key.to_owned(),
                    KeyChange {
                        base: current.cloned(),
                        change: Change::Add(by),
                    },
                );
            }
        }
    }

    /// `self` followed by `later`, as one change set whose bases are
    /// `self`'s (used to accumulate what a handoff worker owes the store).
    pub(crate) fn then(&mut self, later: ChangeSet) {
        for (key, next) in later.keys {
            match self.keys.get_mut(&key) {
                None => {
                    self.keys.insert(key, next);
                }
                Some(entry) => {
                    entry.change = match (&entry.change, next.change) {
                        (_, Change::Assign(v)) => Change::Assign(v),
                        (Change::Add(a), Change::Add(b)) => Change::Add(a.saturating_add(b)),
                        (Change::Assign(v), Change::Add(b)) => {
                            let now = v.as_ref().and_then(Value::as_i64).unwrap_or(0);
                            Change::Assign(Some(Value::from(now.saturating_add(b))))
                        }
                    };
                }
            }
        }
    }

    /// Replays these changes onto `target` (a session someone else wrote
    /// since ours was read). Returns the keys in true conflict, where the
    /// other side's value was overwritten by ours.
    pub(crate) fn replay_onto(&self, target: &mut Map<String, Value>) -> Vec<String> {
        let mut conflicts = Vec::new();
        for (key, entry) in &self.keys {
            let now = target.get(key);
            match &entry.change {
                Change::Add(by) => {
                    let sum = match now {
                        None => Some(*by),
                        Some(value) => value.as_i64().and_then(|n| n.checked_add(*by)),
                    };
                    match sum {
                        Some(sum) => {
                            target.insert(key.clone(), Value::from(sum));
                        }
                        // The other side made it a non-number (or it would
                        // overflow): ours wins with our increment as the value.
                        None => {
                            conflicts.push(key.clone());
                            target.insert(key.clone(), Value::from(*by));
                        }
                    }
                }
                Change::Assign(value) => {
                    let untouched_by_other = now == entry.base.as_ref();
                    let same_result = now == value.as_ref();
                    if !untouched_by_other && !same_result {
                        conflicts.push(key.clone());
                    }
                    match value {
                        Some(v) => {
                            target.insert(key.clone(), v.clone());
                        }
                        None => {
                            target.remove(key);
                        }
                    }
                }
            }
        }
        conflicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn increments_add_up_and_disjoint_sets_merge() {
        let mut ours = ChangeSet::default();
        ours.add("n", Some(&json!(1)), 1, 2);
        ours.assign("mine", None, Some(json!("a")));
        // Meanwhile the other request did n += 1 and set "theirs".
        let mut stored = map(json!({"n": 2, "theirs": true}));
        let conflicts = ours.replay_onto(&mut stored);
        assert!(conflicts.is_empty());
        assert_eq!(stored, map(json!({"n": 3, "theirs": true, "mine": "a"})));
    }

    #[test]
    fn same_key_different_values_is_reported_and_last_writer_wins() {
        let mut ours = ChangeSet::default();
        ours.assign("color", Some(&json!("red")), Some(json!("blue")));
        ours.assign("size", Some(&json!(1)), None);
        let mut stored = map(json!({"color": "green", "size": 2}));
        let conflicts = ours.replay_onto(&mut stored);
        assert_eq!(conflicts, vec!["color".to_owned(), "size".to_owned()]);
        assert_eq!(stored, map(json!({"color": "blue"})));
        // Both sides setting the same value is no conflict.
        let mut stored = map(json!({"color": "blue", "size": 1}));
        assert_eq!(ours.replay_onto(&mut stored), vec![] as Vec<String>);
    }

    #[test]
    fn then_folds_later_changes_keeping_first_base() {
        let mut first = ChangeSet::default();
        first.add("n", None, 2, 2);
        first.assign("k", Some(&json!(0)), Some(json!(1)));
        let mut later = ChangeSet::default();
        later.add("n", Some(&json!(2)), 3, 5);
        later.add("k", Some(&json!(1)), 4, 5);
        first.then(later);
        let mut stored = map(json!({"n": 10, "k": 0}));
        assert!(first.replay_onto(&mut stored).is_empty());
        assert_eq!(stored, map(json!({"n": 15, "k": 5})));
    }
}
