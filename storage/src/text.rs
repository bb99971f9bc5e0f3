//! Full-text and sparse-vector retrieval next to dense search.
//!
//! * [`Analyzer`]: how a `text` field's values and queries become terms — Unicode word
//!   boundaries (UAX #29), lower-casing, ASCII folding, and optionally a language's Snowball
//!   stemmer and its stop words;
//! * [`TextIndex`]: per segment, the posting lists (rows with term frequencies), per-row lengths
//!   and a term dictionary of one `text` field. The mutable segment appends to it on every
//!   write; a sealed segment holds it in its checksummed field index file, term dictionary as
//!   an FST, postings in bit-packed blocks of 128, read in place from the mapped file;
//! * [`bm25`]: Okapi BM25 with statistics summed over every segment of a snapshot (live rows
//!   only), so scores do not depend on how rows fall into segments;
//! * [`SparseIndex`]: per segment, the inverted index of a `sparse` field (a point's
//!   `{indices, values}` term weights), scored by dot product;
//! * [`fusion`]: reciprocal-rank fusion and distribution-based score fusion of the branches of
//!   a hybrid search.
pub mod bm25;
pub mod fusion;
mod postings;
mod sparse;

use std::collections::HashSet;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use unicode_segmentation::UnicodeSegmentation;

pub use postings::{Blob, TextIndex};
pub use sparse::{MAX_SPARSE_ENTRIES, SparseIndex, SparseVector, parse_sparse};

/// A little-endian `u16` at `at`, if in range (the sealed index readers never trust offsets).
pub(crate) fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// A little-endian `u32` at `at`, if in range.
pub(crate) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// A little-endian `u64` at `at`, if in range.
pub(crate) fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Whether `b` starts with `magic` and format `format` (the sealed index headers).
pub(crate) fn has_header(b: &[u8], magic: &[u8; 4], format: u32) -> bool {
    b.get(0..4) == Some(magic.as_slice()) && le_u32(b, 4) == Some(format)
}

/// Terms longer than this many bytes (after folding) are dropped: they are not words (base64,
/// hashes, URLs glued together) and would only bloat the dictionary.
pub const MAX_TERM_BYTES: usize = 64;

/// A language with a Snowball stemmer (and, for most, an NLTK stop-word list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Language {
    Arabic,
    Danish,
    Dutch,
    English,
    Finnish,
    French,
    German,
    Greek,
    Hungarian,
    Italian,
    Norwegian,
    Portuguese,
    Romanian,
    Russian,
    Spanish,
    Swedish,
    Tamil,
    Turkish,
}

const LANGUAGES: [(Language, &str, &str); 18] = [
    (Language::Arabic, "arabic", "ar"),
    (Language::Danish, "danish", "da"),
    (Language::Dutch, "dutch", "nl"),
    (Language::English, "english", "en"),
    (Language::Finnish, "finnish", "fi"),
    (Language::French, "french", "fr"),
    (Language::German, "german", "de"),
    (Language::Greek, "greek", "el"),
    (Language::Hungarian, "hungarian", "hu"),
    (Language::Italian, "italian", "it"),
    (Language::Norwegian, "norwegian", "no"),
    (Language::Portuguese, "portuguese", "pt"),
    (Language::Romanian, "romanian", "ro"),
    (Language::Russian, "russian", "ru"),
    (Language::Spanish, "spanish", "es"),
    (Language::Swedish, "swedish", "sv"),
    (Language::Tamil, "tamil", "ta"),
    (Language::Turkish, "turkish", "tr"),
];

impl Language {
    /// The language's name as written in schemas (`english`).
    pub fn name(self) -> &'static str {
        LANGUAGES
            .iter()
            .find(|l| l.0 == self)
            .map_or("english", |l| l.1)
    }

    /// Parses a name (`english`) or ISO 639-1 code (`en`).
    pub fn parse(s: &str) -> Option<Language> {
        let s = s.to_ascii_lowercase();
        LANGUAGES.iter().find(|l| l.1 == s || l.2 == s).map(|l| l.0)
    }

    fn algorithm(self) -> rust_stemmers::Algorithm {
        use rust_stemmers::Algorithm as A;
        match self {
            Language::Arabic => A::Arabic,
            Language::Danish => A::Danish,
            Language::Dutch => A::Dutch,
            Language::English => A::English,
            Language::Finnish => A::Finnish,
            Language::French => A::French,
            Language::German => A::German,
            Language::Greek => A::Greek,
            Language::Hungarian => A::Hungarian,
            Language::Italian => A::Italian,
            Language::Norwegian => A::Norwegian,
            Language::Portuguese => A::Portuguese,
            Language::Romanian => A::Romanian,
            Language::Russian => A::Russian,
            Language::Spanish => A::Spanish,
            Language::Swedish => A::Swedish,
            Language::Tamil => A::Tamil,
            Language::Turkish => A::Turkish,
        }
    }

    /// The language's stop words, folded as terms are (empty when the list has none).
    fn stop_words(self) -> &'static HashSet<String> {
        static SETS: OnceLock<Vec<(Language, HashSet<String>)>> = OnceLock::new();
        let sets = SETS.get_or_init(|| {
            LANGUAGES
                .iter()
                .map(|&(l, _, code)| {
                    let words = stop_words::lookup(code).unwrap_or(&[]);
                    let plain = Analyzer::default();
                    let set = words.iter().flat_map(|w| plain.terms(w)).collect();
                    (l, set)
                })
                .collect()
        });
        static EMPTY: OnceLock<HashSet<String>> = OnceLock::new();
        sets.iter()
            .find(|(l, _)| *l == self)
            .map_or_else(|| EMPTY.get_or_init(HashSet::new), |(_, s)| s)
    }
}

/// How a `text` field's values and queries become terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Analyzer {
    /// Stem with this language's Snowball stemmer (`None`: no stemming).
    #[serde(default)]
    pub language: Option<Language>,
    /// Drop the language's stop words (needs a language).
    #[serde(default)]
    pub stop_words: bool,
}

impl Analyzer {
    /// The analyzer's spelling in a field type after `text`: `""`, `":english"` or
    /// `":english+stop"`.
    pub fn suffix(self) -> String {
        match (self.language, self.stop_words) {
            (None, _) => String::new(),
            (Some(l), false) => format!(":{}", l.name()),
            (Some(l), true) => format!(":{}+stop", l.name()),
        }
    }

    /// Parses what follows `text` in a type name: `""`, `":english"`, `":en+stop"`.
    pub fn parse_suffix(s: &str) -> Option<Analyzer> {
        if s.is_empty() {
            return Some(Analyzer::default());
        }
        let spec = s.strip_prefix(':')?;
        let (lang, stop) = match spec.strip_suffix("+stop") {
            Some(l) => (l, true),
            None => (spec, false),
        };
        Some(Analyzer {
            language: Some(Language::parse(lang)?),
            stop_words: stop,
        })
    }

    /// The terms of `text`, in order (repeats kept).
    pub fn terms(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.for_each_term(text, |t| out.push(t));
        out
    }

    /// Calls `f` with each term of `text`, in order.
    pub fn for_each_term(&self, text: &str, mut f: impl FnMut(String)) {
        let stemmer = self
            .language
            .map(|l| rust_stemmers::Stemmer::create(l.algorithm()));
        let stops = match (self.language, self.stop_words) {
            (Some(l), true) => Some(l.stop_words()),
            _ => None,
        };
        for word in text.unicode_words() {
            let folded = fold(word);
            if folded.is_empty() || folded.len() > MAX_TERM_BYTES {
                continue;
            }
            if stops.is_some_and(|s| s.contains(&folded)) {
                continue;
            }
            match &stemmer {
                Some(st) => {
                    let stem = st.stem(&folded);
                    f(stem.into_owned());
                }
                None => f(folded),
            }
        }
    }
}

/// Lower-cases `word` and folds it to ASCII where a letter has a plain form: accents and other
/// combining marks removed after compatibility decomposition (é → e, ﬁ → fi, ² → 2), and the
/// letters that do not decompose spelled out (ß → ss, æ → ae, ø → o, ł → l, þ → th, đ → d).
/// Scripts without an ASCII form (Cyrillic, Greek, CJK…) are kept, lower-cased.
pub fn fold(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    if word.is_ascii() {
        out.extend(word.chars().map(|c| c.to_ascii_lowercase()));
        return out;
    }
    for c in word.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        for l in c.to_lowercase() {
            match l {
                'ß' => out.push_str("ss"),
                'æ' => out.push_str("ae"),
                'œ' => out.push_str("oe"),
                'ø' => out.push('o'),
                'ł' => out.push('l'),
                'đ' | 'ð' => out.push('d'),
                'þ' => out.push_str("th"),
                'ı' => out.push('i'),
                '\u{2019}' | '\u{2018}' => out.push('\''),
                other => out.push(other),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_lowered_and_folded() {
        let a = Analyzer::default();
        assert_eq!(
            a.terms("Crème Brûlée, the ABACUS-2000; straße Œuvre ﬁne."),
            [
                "creme", "brulee", "the", "abacus", "2000", "strasse", "oeuvre", "fine"
            ]
        );
        assert_eq!(a.terms("Москва 東京"), ["москва", "東", "京"]);
        assert!(a.terms(&"x".repeat(MAX_TERM_BYTES + 1)).is_empty());
    }

    #[test]
    fn stemming_and_stop_words_per_language() {
        let en = Analyzer {
            language: Some(Language::English),
            stop_words: false,
        };
        assert_eq!(en.terms("running runners ran"), ["run", "runner", "ran"]);
        let en_stop = Analyzer {
            stop_words: true,
            ..en
        };
        assert_eq!(en_stop.terms("What is the Abacus?"), ["abacus"]);
        let fr = Analyzer::parse_suffix(":fr+stop").unwrap();
        assert_eq!(fr.language, Some(Language::French));
        assert_eq!(fr.terms("les chevaux"), ["cheval"]);
        assert_eq!(
            Analyzer::parse_suffix(":english").unwrap().suffix(),
            ":english"
        );
        assert!(Analyzer::parse_suffix(":klingon").is_none());
        assert!(Analyzer::parse_suffix("english").is_none());
    }
}
