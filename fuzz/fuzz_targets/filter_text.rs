//! The filter text parser: any text gives a filter or an error pointing into it, never a
//! panic or a stack overflow; a parsed filter validates (depth) and evaluates on a payload.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiver_storage::filter::{self, Schema};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match filter::parse(text) {
        Ok(f) => {
            let _ = f.validate(&Schema::new(), filter::MAX_DEPTH);
            let payload = serde_json::json!({"a": 1, "b": ["x", "y"], "c": {"d": 2.5}});
            let _ = f.matches(&quiver_storage::PointId::Num(1), Some(&payload));
        }
        Err(e) => assert!(e.column <= text.chars().count() + 1, "{e}"),
    }
});
