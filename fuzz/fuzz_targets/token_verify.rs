//! Bearer tokens arrive from anyone: neither verifier may panic, and nothing
//! random may verify.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tollgate_identity::{SigningKeyPair, Tokens};

fn tokens() -> &'static Tokens {
    static T: OnceLock<Tokens> = OnceLock::new();
    T.get_or_init(|| {
        let (key, _) = SigningKeyPair::generate().unwrap();
        Tokens::new(key, "tollgate", "acme.test", "tollgate")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        assert!(tokens().verify_svid(s, 1_800_000_000).is_err());
        assert!(tokens().verify_task_credential(s, 1_800_000_000).is_err());
    }
});
