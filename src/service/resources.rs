//! Small Resource Server resources: a registry of names with their server-side wait, and
//! the 26-character ids the original hands out (Crockford base32 of 128 bits: a 48-bit
//! millisecond timestamp and 80 random bits). Pure: time and random bytes are arguments.

use std::collections::HashMap;

#[cfg(test)]
use crate::core::names::CROCKFORD;
use crate::core::names::{base32_128, time_ordered_id, LockName};
use crate::core::rand::fnv1a;

/// One registered resource.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// Its id.
    pub id: String,
    /// Server-side wait in seconds: 0 waits up to the server's maximum, < 0 tries once.
    pub timeout_s: i64,
}

impl Resource {
    /// How long a lock request on this resource may wait, capped at `max_wait_ms`.
    pub fn wait_ms(&self, max_wait_ms: u64) -> u64 {
        match self.timeout_s {
            t if t < 0 => 0,
            0 => max_wait_ms,
            t => (t as u64).saturating_mul(1_000).min(max_wait_ms),
        }
    }
}

/// Every registered resource.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    by_name: HashMap<LockName, Resource>,
}

impl Resources {
    /// The resource of that name.
    pub fn get(&self, name: &LockName) -> Option<&Resource> {
        self.by_name.get(name)
    }

    /// Registers `name`; `None` if it exists already.
    pub fn create(&mut self, name: LockName, timeout_s: i64, now_ms: u64, random: [u8; 16]) -> Option<&Resource> {
        if self.by_name.contains_key(&name) {
            return None;
        }
        let id = time_ordered_id(now_ms, random);
        Some(self.by_name.entry(name).or_insert(Resource { id, timeout_s }))
    }

    /// Removes the resource `name`; returns it if it was registered.
    pub fn remove(&mut self, name: &LockName) -> Option<Resource> {
        self.by_name.remove(name)
    }

    /// Every resource as (name, resource), by name.
    pub fn export(&self) -> Vec<(LockName, Resource)> {
        let mut all: Vec<(LockName, Resource)> = self.by_name.iter().map(|(n, r)| (n.clone(), r.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Rebuilds the registry from `export`'s list.
    pub fn import(all: Vec<(LockName, Resource)>) -> Self {
        Self { by_name: all.into_iter().collect() }
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The id of a resource's data row (`selector`), stable for the pair: the original gives
/// each row an id, and clients may show it.
pub fn row_id(resource_id: &str, selector: &str) -> String {
    let key = format!("{resource_id}/{selector}");
    let high = u128::from(fnv1a(key.as_bytes()));
    let low = u128::from(fnv1a(format!("{key}#").as_bytes()));
    base32_128((high << 64) | low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_26_crockford_characters_ordered_by_time() {
        let mut r = Resources::default();
        let a = r.create(LockName::parse("a").unwrap(), 0, 1_000, [0xff; 16]).unwrap().id.clone();
        let b = r.create(LockName::parse("b").unwrap(), 0, 2_000, [0; 16]).unwrap().id.clone();
        assert_eq!(a.len(), 26);
        assert!(a.bytes().all(|c| CROCKFORD.contains(&c)));
        assert!(a < b, "later ids sort later");
        assert!(r.create(LockName::parse("a").unwrap(), 5, 3_000, [1; 16]).is_none(), "no duplicate");
        assert_eq!(base32_128(0), "0".repeat(26));
        assert_eq!(base32_128(u128::MAX), format!("7{}", "Z".repeat(25)));
        assert_eq!(row_id(&a, "x"), row_id(&a, "x"));
        assert_ne!(row_id(&a, "x"), row_id(&a, "y"));
    }

    #[test]
    fn the_timeout_is_the_server_side_wait() {
        let r = |timeout_s| Resource { id: String::new(), timeout_s };
        assert_eq!(r(0).wait_ms(60_000), 60_000, "0 waits up to the maximum");
        assert_eq!(r(2).wait_ms(60_000), 2_000);
        assert_eq!(r(600).wait_ms(60_000), 60_000, "capped");
        assert_eq!(r(-1).wait_ms(60_000), 0, "negative tries once");
    }
}
