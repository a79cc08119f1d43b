#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = tollgate_core::SpiffeId::parse(s) {
            // Whatever parses must print back to itself.
            assert_eq!(id.to_string(), s);
        }
    }
});
