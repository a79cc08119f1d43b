#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<tollgate_server::api::authzen::Evaluations>(data);
    let _ = serde_json::from_slice::<tollgate_server::api::authzen::Evaluation>(data);
});
