//! The prompt builder: any chunk text and question build a prompt whose data blocks the text
//! cannot close or escape, and the injection flagger runs on any text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiver_rag::prompt::{ContextChunk, build};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid -= 1;
    }
    let (question, body) = text.split_at(mid);
    let chunks = vec![
        ContextChunk {
            id: "a#0".into(),
            source: body.chars().take(20).collect(),
            text: body.to_owned(),
            score: 1.0,
            flagged: false,
        },
        ContextChunk {
            id: "b#1".into(),
            source: "s".into(),
            text: question.to_owned(),
            score: 0.5,
            flagged: true,
        },
    ];
    let (p, kept, _) = build(question, &chunks, 1 << 20, &|s: &str| s.len() / 4);
    // One closing tag per kept chunk: chunk text never ends its block early.
    assert_eq!(
        p.context.matches("</document>").count(),
        kept.len(),
        "{}",
        p.context
    );
    let _ = quiver_rag::inject::reasons(text);
});
