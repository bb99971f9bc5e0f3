//! The extractive generator: answers by quoting the retrieved sentences that share the most
//! (rarer) words with the question, in retrieval order, each with its chunk's citation. No
//! model is called; it never states anything the sources do not.
use std::collections::{HashMap, HashSet};

use super::embed::{STOPWORDS, words};

/// A retrieved chunk, as the generator sees it.
#[derive(Debug, Clone)]
pub struct Source {
    /// Chunk id, cited as `[id]`.
    pub chunk_id: String,
    /// Chunk text.
    pub text: String,
}

/// Sentences of `text` (split after `.`, `!` or `?` followed by whitespace, and at newlines).
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let b = text.as_bytes();
    for i in 0..b.len() {
        let end = matches!(b[i], b'.' | b'!' | b'?')
            && b.get(i + 1).is_none_or(|c| c.is_ascii_whitespace())
            || b[i] == b'\n';
        if end {
            let s = text[start..=i].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = i + 1;
        }
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// The answer and, per used source (by index), the sentences quoted from it.
pub fn answer(
    question: &str,
    sources: &[Source],
    max_sentences: usize,
) -> (String, Vec<(usize, Vec<String>)>) {
    let q: HashSet<String> = words(question)
        .into_iter()
        .filter(|w| w.len() > 1 && !STOPWORDS.contains(&w.as_str()))
        .collect();
    let all: Vec<(usize, usize, &str)> = sources
        .iter()
        .enumerate()
        .flat_map(|(si, s)| {
            sentences(&s.text)
                .into_iter()
                .enumerate()
                // Headings give context; they are not answers.
                .filter(|(_, t)| !t.starts_with('#'))
                .map(move |(i, t)| (si, i, t))
        })
        .collect();
    // Rarer question words count more: document frequency over the retrieved sentences.
    let mut df: HashMap<&str, usize> = HashMap::new();
    let sets: Vec<HashSet<String>> = all
        .iter()
        .map(|(_, _, t)| words(t).into_iter().collect())
        .collect();
    for set in &sets {
        for w in q.iter().filter(|w| set.contains(*w)) {
            *df.entry(w.as_str()).or_default() += 1;
        }
    }
    let mut scored: Vec<(f32, usize)> = sets
        .iter()
        .enumerate()
        .map(|(i, set)| {
            let s: f32 = q
                .iter()
                .filter(|w| set.contains(*w))
                .map(|w| 1.0 / (1.0 + (df[w.as_str()] as f32).ln()))
                .sum();
            // Earlier (better-ranked) sources win ties.
            (s - 0.001 * all[i].0 as f32, i)
        })
        .filter(|(s, _)| *s > 0.0)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    // Sentences matching less than half as well as the best one answer something else.
    let best = scored.first().map_or(0.0, |x| x.0);
    let mut picked: Vec<usize> = scored
        .iter()
        .take_while(|x| x.0 >= 0.5 * best)
        .take(max_sentences)
        .map(|x| x.1)
        .collect();
    picked.sort_by_key(|&i| (all[i].0, all[i].1));
    let mut used: Vec<(usize, Vec<String>)> = Vec::new();
    let mut parts = Vec::new();
    for i in picked {
        let (si, _, text) = all[i];
        parts.push(format!("{text} [{}]", sources[si].chunk_id));
        match used.iter_mut().find(|(s, _)| *s == si) {
            Some((_, v)) => v.push(text.to_owned()),
            None => used.push((si, vec![text.to_owned()])),
        }
    }
    (parts.join(" "), used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_the_matching_sentences_with_citations() {
        let sources = vec![
            Source {
                chunk_id: "a#0".into(),
                text: "Paris is the capital of France. It is large.".into(),
            },
            Source {
                chunk_id: "b#0".into(),
                text: "Berlin is in Germany. The capital of Germany is Berlin.".into(),
            },
        ];
        let (a, used) = answer("What is the capital of France?", &sources, 1);
        assert_eq!(a, "Paris is the capital of France. [a#0]");
        assert_eq!(
            used,
            vec![(0, vec!["Paris is the capital of France.".to_owned()])]
        );
        let (a, _) = answer("zebra", &sources, 3);
        assert!(a.is_empty());
        assert_eq!(
            sentences("One. Two! Three? 3.5 stays"),
            vec!["One.", "Two!", "Three?", "3.5 stays"]
        );
    }
}
