//! The PII redactor: any text redacts without panicking, placeholders replace every match, and
//! restoring the placeholders gives the original text back.
#![no_main]
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use quiver_rag::pii::Redactor;

/// Built once, as the server does (compiling its patterns per input would dominate the run).
static REDACTOR: LazyLock<Redactor> = LazyLock::new(Redactor::default);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let r = REDACTOR.redact(text);
    for (placeholder, original) in &r.map {
        assert!(r.text.contains(placeholder.as_str()));
        assert!(!original.is_empty());
    }
    // Text that had no bracket of its own round-trips exactly.
    if !text.contains('[') {
        assert_eq!(Redactor::restore(&r.text, &r.map), text);
    }
});
