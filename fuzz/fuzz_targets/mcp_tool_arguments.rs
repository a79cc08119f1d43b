//! The arguments of an agent's MCP `tools/call`, mapped through every tool
//! binding of the example catalog (resource attributes derived from them,
//! `host_of` URLs parsed and re-serialised): no panic, and a derived host
//! is what parsing the forwarded URL again gives (the tool sees the host
//! that policy judged).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn catalog() -> &'static tollgate_core::Catalog {
    static C: OnceLock<tollgate_core::Catalog> = OnceLock::new();
    C.get_or_init(|| tollgate_server::embedded::pack().unwrap().catalog().clone())
}

fuzz_target!(|data: &[u8]| {
    let Ok(serde_json::Value::Object(args)) = serde_json::from_slice(data) else { return };
    for op in catalog().operations.values() {
        let Some(binding) = &op.tool else { continue };
        let Ok(derived) = binding.derive_attributes(args.clone()) else { continue };
        for (attr, src) in &binding.resource_attributes {
            if let Some(arg) = &src.host_of {
                let forwarded = derived.arguments[arg].as_str().unwrap();
                assert_eq!(
                    tollgate_core::url_host(forwarded).as_deref(),
                    derived.attributes[attr].as_str(),
                    "{forwarded:?}"
                );
            }
        }
    }
});
