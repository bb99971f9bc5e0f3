//! The injection flagger as it was at commit 335fa9f (before Unicode folding and the
//! delimiter-forgery check), kept verbatim so `inject::measure` reports before and after
//! figures from one run. Test-only.
#![allow(dead_code)]

const OVERRIDES: &[&str] = &[
    "ignore previous instructions",
    "ignore all previous instructions",
    "ignore the previous instructions",
    "ignore all prior instructions",
    "ignore prior instructions",
    "ignore the above",
    "disregard previous instructions",
    "disregard all previous instructions",
    "disregard the above",
    "forget your instructions",
    "forget all previous instructions",
    "new instructions:",
    "you are now",
    "act as an unrestricted",
    "reveal your system prompt",
    "print your system prompt",
    "override your instructions",
];

const ROLE_TAGS: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "<|system|>",
    "<|assistant|>",
    "<|user|>",
    "[inst]",
    "[/inst]",
    "<<sys>>",
    "<system>",
    "</system>",
    "### system:",
    "\nsystem:",
    "\nassistant:",
];

const TOOL_SYNTAX: &[&str] = &[
    "<tool_call>",
    "</tool_call>",
    "\"function_call\"",
    "\"tool_calls\"",
    "```tool",
    "<function=",
];

/// Zero-width characters. They are legitimate in some scripts (a joiner in Indic text, a word
/// joiner in math typography), so only one that splits a Latin-letter word counts as hiding
/// text ("ig\u{200b}nore").
const ZERO_WIDTH: &[char] = &['\u{200b}', '\u{200c}', '\u{200d}', '\u{2060}', '\u{feff}'];

/// Whether zero-width characters sit between two ASCII letters.
fn splits_a_word(text: &str) -> bool {
    let cs: Vec<char> = text.chars().collect();
    cs.iter().enumerate().any(|(i, c)| {
        if !ZERO_WIDTH.contains(c) || i == 0 || !cs[i - 1].is_ascii_alphabetic() {
            return false;
        }
        cs[i..]
            .iter()
            .find(|x| !ZERO_WIDTH.contains(x))
            .is_some_and(char::is_ascii_alphabetic)
    })
}

/// Why `text` looks like instructions to a model (empty: it does not).
pub fn reasons(text: &str) -> Vec<&'static str> {
    let lower = format!("\n{}", text.to_lowercase());
    // Collapse runs of whitespace so "ignore   previous\ninstructions" still matches.
    let squashed: String = lower.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    if OVERRIDES.iter().any(|p| squashed.contains(p)) {
        out.push("instruction_override");
    }
    if ROLE_TAGS.iter().any(|t| lower.contains(t)) {
        out.push("role_tag");
    }
    if TOOL_SYNTAX.iter().any(|t| lower.contains(t)) {
        out.push("tool_call_syntax");
    }
    // Right-to-left override reorders what a reader sees; comments are invisible when rendered.
    if splits_a_word(text) || text.contains('\u{202e}') || lower.contains("<!--") {
        out.push("hidden_text");
    }
    out
}
