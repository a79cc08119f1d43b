#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz_targets::authzen_body(data));
