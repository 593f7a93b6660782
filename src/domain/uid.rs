//! A workload's UID as the controller keeps it.
//!
//! Every workload's UID is held in several places: the view table's key and the view, the key of
//! its ReplicaSets (or ControllerRevisions) and each of their owner fields, the pipelines'
//! selections, the ledger's keys. As a `String` each copy is 24 bytes and a 48-byte allocation;
//! at 10,000 Deployments those copies were about a fifth of the heap. The API server gives every
//! object a UUID in canonical lower-case form; such a UID is kept as its 16 bytes. Anything else
//! (the ledger's test-event keys, a UID of hand-made test objects) is kept as its text, so a UID
//! always prints as it came.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Ordered as the text is for canonical UUIDs (the bytes compare as their hex digits do); a UID
/// kept as text sorts after every UUID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Uid {
    Uuid([u8; 16]),
    Text(Box<str>),
}

/// Where the hyphens of a canonical UUID are.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || HYPHENS.iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut digits = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !HYPHENS.contains(i))
        .map(|(_, &c)| nibble(c));
    let mut out = [0u8; 16];
    for byte in &mut out {
        *byte = (digits.next()?? << 4) | digits.next()??;
    }
    Some(out)
}

impl Uid {
    pub fn new(s: &str) -> Uid {
        match uuid(s) {
            Some(bytes) => Uid::Uuid(bytes),
            None => Uid::Text(s.into()),
        }
    }

    /// The first character of the text (the ledger's shard).
    pub fn first_char(&self) -> Option<char> {
        match self {
            Uid::Uuid(b) => char::from_digit(u32::from(b[0] >> 4), 16),
            Uid::Text(t) => t.chars().next(),
        }
    }
}

impl Default for Uid {
    fn default() -> Self {
        Uid::Text("".into())
    }
}

impl From<&str> for Uid {
    fn from(s: &str) -> Self {
        Uid::new(s)
    }
}

impl From<String> for Uid {
    fn from(s: String) -> Self {
        match uuid(&s) {
            Some(bytes) => Uid::Uuid(bytes),
            None => Uid::Text(s.into_boxed_str()),
        }
    }
}

impl PartialEq<str> for Uid {
    fn eq(&self, other: &str) -> bool {
        match self {
            Uid::Uuid(b) => uuid(other).is_some_and(|o| o == *b),
            Uid::Text(t) => **t == *other,
        }
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uid::Uuid(b) => {
                for (i, byte) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
            Uid::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Serialize for Uid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Uid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Uid::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_prints_as_it_came() {
        for s in [
            // As the control plane assigns them: tests/fixtures/deployment-complete.json.
            "1578d68e-2a80-47db-bc61-a345c65c17ad",
            // Canonical, the lowest and highest digits.
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            // Not canonical: kept as text.
            "4F1C2A9E-7B3D-4E8F-9A01-23456789ABCD",
            "4f1c2a9e7b3d4e8f9a0123456789abcd",
            "4f1c2a9e-7b3d-4e8f-9a01-23456789abcg",
            "4f1c2a9e-7b3d-4e8f-9a01-23456789abc-",
            "test-event-00ff00ff00ff00ff",
            "u1",
            "",
            "ü-ünïcode",
        ] {
            let uid = Uid::new(s);
            assert_eq!(uid.to_string(), s);
            assert!(uid == *s);
            assert_eq!(uid.first_char(), s.chars().next());
            let json = serde_json::to_string(&uid).unwrap();
            assert_eq!(serde_json::from_str::<Uid>(&json).unwrap(), uid);
        }
        assert!(matches!(
            Uid::new("4f1c2a9e-7b3d-4e8f-9a01-23456789abcd"),
            Uid::Uuid(_)
        ));
        assert!(matches!(
            Uid::new("4F1C2A9E-7B3D-4E8F-9A01-23456789ABCD"),
            Uid::Text(_)
        ));
        assert!(
            Uid::new("4f1c2a9e-7b3d-4e8f-9a01-23456789abcd")
                != *"4F1C2A9E-7B3D-4E8F-9A01-23456789ABCD"
        );
    }

    #[test]
    fn uuids_sort_as_their_text_does() {
        let mut texts = vec![
            "f0000000-0000-0000-0000-000000000000",
            "0a000000-0000-0000-0000-000000000000",
            "09ffffff-ffff-ffff-ffff-ffffffffffff",
            "0a000000-0000-0000-0000-000000000001",
            "a0000000-0000-0000-0000-000000000000",
        ];
        let mut uids: Vec<Uid> = texts.iter().map(|s| Uid::new(s)).collect();
        texts.sort();
        uids.sort();
        let printed: Vec<String> = uids.iter().map(Uid::to_string).collect();
        assert_eq!(printed, texts);
    }

    #[test]
    fn a_uid_is_small() {
        assert_eq!(std::mem::size_of::<Uid>(), 24);
    }
}
