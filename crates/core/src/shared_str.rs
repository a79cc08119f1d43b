//! An immutable string whose clones share one allocation.
//!
//! A task tree's cached history holds every record the tree made for as
//! long as the tree is cached, and most of a record's text repeats from
//! record to record: the root task, the task, the agent, the action, the
//! labels and often the resource. As `String`s, each record carried its own
//! copies: about 490 bytes of resident memory per decision under `bench
//! http`. As `SharedStr`s, [`TreeHistory`](crate::TreeHistory) makes equal
//! ones share a single allocation, and a decision costs about 200 bytes.
//!
//! It reads like a `&str` (`Deref`, comparisons with `str`, `&str` and
//! `String`) and serialises as a plain JSON string. [`SharedStrs`] is the
//! same for a list of strings (a record's labels).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SharedStr(Arc<str>);

impl SharedStr {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` and `other` are one allocation (not merely equal).
    pub fn shares_with(&self, other: &SharedStr) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr(Arc::from(s))
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr(Arc::from(s))
    }
}

impl From<&String> for SharedStr {
    fn from(s: &String) -> Self {
        SharedStr(Arc::from(s.as_str()))
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> Self {
        s.0.to_string()
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, other: &String) -> bool {
        &*self.0 == other.as_str()
    }
}

impl PartialEq<SharedStr> for str {
    fn eq(&self, other: &SharedStr) -> bool {
        self == &*other.0
    }
}

impl PartialEq<SharedStr> for &str {
    fn eq(&self, other: &SharedStr) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<SharedStr> for String {
    fn eq(&self, other: &SharedStr) -> bool {
        self.as_str() == &*other.0
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Serialize for SharedStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SharedStr::from)
    }
}

/// An immutable list of strings whose clones share one allocation: a
/// record's labels, the same for every record of its kind of action.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SharedStrs(Arc<[String]>);

impl SharedStrs {
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether `self` and `other` are one allocation (not merely equal).
    pub fn shares_with(&self, other: &SharedStrs) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for SharedStrs {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl From<Vec<String>> for SharedStrs {
    fn from(v: Vec<String>) -> Self {
        SharedStrs(Arc::from(v))
    }
}

impl From<&[String]> for SharedStrs {
    fn from(v: &[String]) -> Self {
        SharedStrs(Arc::from(v))
    }
}

impl FromIterator<String> for SharedStrs {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        SharedStrs(iter.into_iter().collect())
    }
}

impl PartialEq<Vec<String>> for SharedStrs {
    fn eq(&self, other: &Vec<String>) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<[String]> for SharedStrs {
    fn eq(&self, other: &[String]) -> bool {
        *self.0 == *other
    }
}

impl fmt::Debug for SharedStrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for SharedStrs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedStrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(d).map(SharedStrs::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_compares_and_serialises_as_a_string() {
        let s = SharedStr::from("edr.read_alerts");
        assert_eq!(s, "edr.read_alerts");
        assert_eq!("edr.read_alerts", s);
        assert_eq!(s, String::from("edr.read_alerts"));
        assert!(s.starts_with("edr."));
        assert_eq!(format!("{s} {s:?}"), "edr.read_alerts \"edr.read_alerts\"");
        let json = serde_json::to_string(&s).unwrap_or_default();
        assert_eq!(json, "\"edr.read_alerts\"");
        let back: SharedStr = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, s);
        assert!(!back.shares_with(&s));
        assert!(s.clone().shares_with(&s));
    }

    #[test]
    fn a_shared_list_reads_and_serialises_as_a_list() {
        let l = SharedStrs::from(vec!["reads-secret".to_string(), "egress".to_string()]);
        assert_eq!(l.len(), 2);
        assert!(l.iter().any(|x| x == "egress"));
        assert_eq!(l, vec!["reads-secret".to_string(), "egress".to_string()]);
        let json = serde_json::to_string(&l).unwrap_or_default();
        assert_eq!(json, r#"["reads-secret","egress"]"#);
        let back: SharedStrs = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, l);
        assert!(!back.shares_with(&l) && l.clone().shares_with(&l));
        assert_eq!(format!("{l:?}"), r#"["reads-secret", "egress"]"#);
    }
}
