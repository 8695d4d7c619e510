//! One request's view of a session: a copy of the data as loaded, the
//! version it was loaded at, and the per-key changes made since.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::changes::ChangeSet;
use super::error::SessionError;
use super::id::SessionId;

/// A session as one request sees it. Reads come from the loaded copy;
/// writes change the copy and are recorded, and reach memory or the store
/// only through [`Sessions::commit`](super::Sessions::commit).
#[derive(Debug, Clone)]
pub struct Session {
    id: SessionId,
    // Shared with the in-memory table until the first write (copy on write),
    // so loading in inproc/handoff mode does not copy the data.
    pub(crate) data: Arc<Map<String, Value>>,
    pub(crate) version: u64,
    pub(crate) is_new: bool,
    pub(crate) changes: ChangeSet,
    /// Read from the store rather than from memory (handoff mode while
    /// joining or handed off): its commit must go to the store, whatever
    /// phase the worker is in by then.
    pub(crate) through_store: bool,
}

impl Session {
    pub(crate) fn fresh(id: SessionId) -> Session {
        Session::loaded(id, 0, Arc::new(Map::new()), true)
    }

    pub(crate) fn loaded(
        id: SessionId,
        version: u64,
        data: Arc<Map<String, Value>>,
        is_new: bool,
    ) -> Session {
        Session {
            id,
            data,
            version,
            is_new,
            changes: ChangeSet::default(),
            through_store: false,
        }
    }

    /// The session id (goes in the cookie).
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The version this copy was loaded at (0: nothing stored yet). Every
    /// commit that writes makes a higher one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// True when nothing was stored under this id when it was loaded.
    pub fn is_new(&self) -> bool {
        self.is_new
    }

    /// True when this copy has changes not yet committed.
    pub fn is_dirty(&self) -> bool {
        !self.changes.is_empty()
    }

    /// The raw JSON value under `key`.
    pub fn get_value(&self, key: &str) -> Option<&Value> {
        self.data.get(key)
    }

    /// The value under `key`, converted to `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.data
            .get(key)
            .map(|v| {
                T::deserialize(v).map_err(|source| SessionError::Json {
                    key: key.to_owned(),
                    source,
                })
            })
            .transpose()
    }

    /// Sets `key` to `value` (as JSON).
    pub fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), SessionError> {
        let value = serde_json::to_value(value).map_err(|source| SessionError::Json {
            key: key.to_owned(),
            source,
        })?;
        self.set_value(key, value);
        Ok(())
    }

    /// Sets `key` to a JSON value.
    pub fn set_value(&mut self, key: &str, value: Value) {
        self.changes
            .assign(key, self.data.get(key), Some(value.clone()));
        Arc::make_mut(&mut self.data).insert(key.to_owned(), value);
    }

    /// Removes `key`, returning what it held.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        if !self.data.contains_key(key) {
            return None;
        }
        self.changes.assign(key, self.data.get(key), None);
        Arc::make_mut(&mut self.data).remove(key)
    }

    /// Adds `by` to the integer under `key` (missing counts as 0) and
    /// returns the new value. Unlike get-then-set, concurrent increments
    /// merge by adding: two requests each adding 1 make the value grow by 2.
    pub fn incr(&mut self, key: &str, by: i64) -> Result<i64, SessionError> {
        let current = match self.data.get(key) {
            None => 0,
            Some(value) => value.as_i64().ok_or_else(|| SessionError::NotAnInteger {
                key: key.to_owned(),
            })?,
        };
        let after = current
            .checked_add(by)
            .ok_or_else(|| SessionError::Overflow {
                key: key.to_owned(),
            })?;
        self.changes.add(key, self.data.get(key), by, after);
        Arc::make_mut(&mut self.data).insert(key.to_owned(), Value::from(after));
        Ok(after)
    }

    /// The keys present, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.data.keys().map(String::as_str)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the session holds no keys.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// All data, read-only.
    pub fn data(&self) -> &Map<String, Value> {
        &self.data
    }
}
