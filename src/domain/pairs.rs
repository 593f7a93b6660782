//! A small string map stored as one sorted slice.
//!
//! A `BTreeMap<String, String>` allocates a node for eleven entries even when it holds one (about
//! 540 bytes before the strings), and a workload's labels, kept annotations, images and selector are
//! usually one to three entries. With 10,000 Deployments and their ReplicaSets watched, those nodes
//! were a third of the controller's heap.

use std::collections::BTreeMap;
use std::ops::Deref;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::domain::sym::Sym;

/// Keys are shared ([`Sym`]): the same few label and annotation keys and container names recur
/// in every workload. Values are `Box<str>` (label values are mostly unique) unless `V` says
/// otherwise ([`Images`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pairs<V = Box<str>>(Box<[(Sym, V)]>);

/// Container name -> image: images recur across workloads (sidecars, a team's base image) and in
/// every ReplicaSet of a workload, so they are shared too.
pub type Images = Pairs<Sym>;

impl<V> Default for Pairs<V> {
    fn default() -> Self {
        Pairs(Box::default())
    }
}

impl<V: Deref<Target = str>> Pairs<V> {
    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// For APIs that take a map (label selectors).
    pub fn to_btree(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// Like a map: the last value given for a key wins.
impl<K: Into<Sym>, W: Into<V>, V> FromIterator<(K, W)> for Pairs<V> {
    fn from_iter<I: IntoIterator<Item = (K, W)>>(iter: I) -> Self {
        let mut v: Vec<(Sym, V)> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // Stable, so equal keys keep their order and the last one is kept below.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.reverse();
        v.dedup_by(|a, b| a.0 == b.0);
        v.reverse();
        Pairs(v.into_boxed_slice())
    }
}

impl<V: From<String>> From<BTreeMap<String, String>> for Pairs<V> {
    fn from(m: BTreeMap<String, String>) -> Self {
        m.into_iter().collect()
    }
}

impl<V: Deref<Target = str>> Serialize for Pairs<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map() {
        let p: Pairs = [("b", "2"), ("a", "1"), ("b", "3")].into_iter().collect();
        assert_eq!(p.len(), 2);
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), Some("3"), "the last value for a key wins");
        assert_eq!(p.get("c"), None);
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "3")]);
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"a":"1","b":"3"}"#);
        let m: BTreeMap<String, String> = p.to_btree();
        assert_eq!(Pairs::from(m), p);
        let images: Images = [("app", "nginx:1.25")].into_iter().collect();
        let again: Images = [("app", "nginx:1.25")].into_iter().collect();
        assert_eq!(images.get("app"), Some("nginx:1.25"));
        assert_eq!(images, again);
    }
}
