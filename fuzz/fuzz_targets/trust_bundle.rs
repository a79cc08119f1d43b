#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz_targets::trust_bundle(data));
