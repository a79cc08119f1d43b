//! SPIFFE IDs as the SPIFFE-ID standard defines them: `spiffe://<trust
//! domain>/<path>`. Tollgate names agent *instances* with them, so the path
//! must not be empty; by convention `/agent/<role>/<instance>`.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("spiffe id must start with spiffe://")]
    Scheme,
    #[error("spiffe id is longer than 2048 bytes")]
    TooLong,
    #[error("trust domain is empty or has characters outside [a-z0-9.-_]")]
    TrustDomain,
    #[error("path is empty; an agent instance needs a path such as /agent/<role>/<instance>")]
    EmptyPath,
    #[error("path segment {0:?} is empty, '.' or '..', or has characters outside [A-Za-z0-9.-_]")]
    Segment(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > 2048 {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let td_ok = !td.is_empty()
            && td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !td_ok {
            return Err(SpiffeIdError::TrustDomain);
        }
        if path.is_empty() || path == "/" {
            return Err(SpiffeIdError::EmptyPath);
        }
        for seg in path[1..].split('/') {
            let ok = !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                return Err(SpiffeIdError::Segment(seg.to_string()));
            }
        }
        Ok(Self {
            trust_domain: td.to_string(),
            path: path.to_string(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The agent's role: the path segment before the instance
    /// (`/agent/ir-responder/i-7` → `ir-responder`). A one-segment path has
    /// no role and yields the empty string, which no example policy matches.
    pub fn role(&self) -> &str {
        let segs: Vec<&str> = self.path[1..].split('/').collect();
        if segs.len() >= 2 {
            segs[segs.len() - 2]
        } else {
            ""
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_instances() {
        let id = SpiffeId::parse("spiffe://acme.test/agent/ir-responder/i-7").unwrap();
        assert_eq!(id.trust_domain(), "acme.test");
        assert_eq!(id.role(), "ir-responder");
        assert_eq!(id.to_string(), "spiffe://acme.test/agent/ir-responder/i-7");
    }

    #[test]
    fn rejects_malformed_ids() {
        use SpiffeIdError::*;
        let cases = [
            ("http://acme.test/a", Scheme),
            ("spiffe://ACME.test/a", TrustDomain),
            ("spiffe:///a", TrustDomain),
            ("spiffe://acme.test", EmptyPath),
            ("spiffe://acme.test/", EmptyPath),
            ("spiffe://acme.test/a//b", Segment(String::new())),
            ("spiffe://acme.test/a/../b", Segment("..".into())),
            ("spiffe://acme.test/a/b?x", Segment("b?x".into())),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "{input}");
        }
    }

    proptest::proptest! {
        #[test]
        fn display_round_trips(td in "[a-z0-9][a-z0-9.-]{0,20}", segs in proptest::collection::vec("[A-Za-z0-9_-]{1,8}", 1..5)) {
            let s = format!("spiffe://{td}/{}", segs.join("/"));
            let id = SpiffeId::parse(&s).unwrap();
            proptest::prop_assert_eq!(id.to_string(), s);
        }
    }
}
