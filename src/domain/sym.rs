//! Strings that repeat across workloads, kept once: namespaces, label and annotation keys,
//! container names, images, field managers, condition reasons.
//!
//! At 10,000 Deployments each of those was an allocation of its own in every view (the key
//! `deployment.kubernetes.io/revision` alone took 48 bytes per workload). A [`Sym`] is a shared,
//! immutable string: making one looks it up in a process-wide pool and shares the copy there.
//! The pool forgets a string once no view holds it (swept when the pool has doubled since the
//! last sweep), so strings a tenant makes up cannot pile up: it holds at most about twice what is
//! in use. Values that are mostly unique (names, label values) stay plain `Box<str>`: sharing
//! them would only add the pool's bookkeeping.
//!
//! A `Sym` behaves as the `str` it holds: it compares, orders, hashes, prints and serializes as
//! that text.

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Sym(Arc<str>);

struct Pool {
    strings: HashSet<Arc<str>>,
    /// Size after the last sweep: the next one comes when the pool has doubled.
    swept: usize,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// Below this many strings the pool is never swept.
const SWEEP_FLOOR: usize = 1024;

impl Sym {
    pub fn new(s: &str) -> Sym {
        let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let pool = guard.get_or_insert_with(|| Pool {
            strings: HashSet::new(),
            swept: 0,
        });
        if let Some(known) = pool.strings.get(s) {
            return Sym(known.clone());
        }
        if pool.strings.len() >= SWEEP_FLOOR.max(pool.swept * 2) {
            pool.strings.retain(|a| Arc::strong_count(a) > 1);
            pool.swept = pool.strings.len();
        }
        let shared: Arc<str> = Arc::from(s);
        pool.strings.insert(shared.clone());
        Sym(shared)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Strings the pool holds now, for tests.
    #[cfg(test)]
    fn pooled() -> usize {
        POOL.lock().unwrap().as_ref().map_or(0, |p| p.strings.len())
    }
}

impl Deref for Sym {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Default for Sym {
    fn default() -> Self {
        Sym::new("")
    }
}

impl PartialEq for Sym {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for Sym {}

impl PartialEq<str> for Sym {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<String> for Sym {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialOrd for Sym {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sym {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl Hash for Sym {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Sym {
    fn from(s: &str) -> Self {
        Sym::new(s)
    }
}

impl From<String> for Sym {
    fn from(s: String) -> Self {
        Sym::new(&s)
    }
}

impl serde::Serialize for Sym {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_text_is_one_copy() {
        let a = Sym::new("deployment.kubernetes.io/revision");
        let b = Sym::from(String::from("deployment.kubernetes.io/revision"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, b);
        assert_eq!(a, *"deployment.kubernetes.io/revision");
        assert!(Sym::new("a") < Sym::new("b"));
        assert_eq!(format!("{a}"), "deployment.kubernetes.io/revision");
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#""deployment.kubernetes.io/revision""#
        );
    }

    /// Made-up strings (a tenant's label keys, say) do not stay in the pool once nothing holds
    /// them: it is swept whenever it has doubled.
    #[test]
    fn the_pool_forgets_what_nothing_holds() {
        let kept: Vec<Sym> = (0..100).map(|i| Sym::new(&format!("kept-{i}"))).collect();
        for round in 0..20 {
            for i in 0..5_000 {
                drop(Sym::new(&format!("gone-{round}-{i}")));
            }
        }
        // Other tests share the pool: bound it loosely, far below the 100,000 made.
        assert!(Sym::pooled() < 20_000, "{} strings pooled", Sym::pooled());
        for (i, k) in kept.iter().enumerate() {
            assert_eq!(k.as_str(), format!("kept-{i}"));
            assert!(Arc::ptr_eq(&k.0, &Sym::new(&format!("kept-{i}")).0));
        }
    }
}
