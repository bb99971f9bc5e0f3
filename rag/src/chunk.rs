//! Chunking: paragraphs (blank-line separated) and Markdown headings are natural boundaries;
//! paragraphs are packed into chunks of about `target` words, and consecutive chunks share
//! `overlap` words so a sentence cut at a boundary is still whole in one of them. "Tokens" are
//! whitespace-separated words here (a tokenizer-free estimate, about 0.75 of a BPE token count).

/// Chunking parameters.
#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    /// Words per chunk, about.
    pub target: usize,
    /// Words repeated at the start of the next chunk.
    pub overlap: usize,
}

impl Default for ChunkParams {
    fn default() -> Self {
        ChunkParams {
            target: 200,
            overlap: 30,
        }
    }
}

/// Blocks of text that should not be split across chunks unless too long: headings start a
/// new block, blank lines end one.
fn blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        let heading = t.starts_with('#');
        if t.is_empty() || heading {
            if !cur.trim().is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur.clear();
            if heading {
                cur.push_str(t);
                cur.push('\n');
            }
            continue;
        }
        cur.push_str(t);
        cur.push('\n');
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Splits `text` into chunks.
pub fn chunk(text: &str, p: ChunkParams) -> Vec<String> {
    chunk_with_headings(text, p)
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

/// Splits `text` into chunks, each with the Markdown heading in effect where it starts (the
/// section it belongs to), if any.
pub fn chunk_with_headings(text: &str, p: ChunkParams) -> Vec<(String, Option<String>)> {
    let target = p.target.max(1);
    let overlap = p.overlap.min(target / 2);
    // Words, each with the index of the heading in effect (into `headings`).
    type Words = Vec<(String, Option<usize>)>;
    let mut chunks: Vec<Words> = Vec::new();
    let mut cur: Words = Vec::new();
    let mut headings: Vec<String> = Vec::new();
    let blocks = blocks(text);
    for b in &blocks {
        if b.starts_with('#') {
            let h = b.lines().next().unwrap_or_default();
            headings.push(h.trim_start_matches('#').trim().to_owned());
        }
        let in_effect = headings.len().checked_sub(1);
        // The last word of a block carries the line break, so chunks keep block boundaries
        // (a heading stays its own line, not the start of the next sentence).
        let mut words: Words = b
            .split_whitespace()
            .map(|w| (w.to_owned(), in_effect))
            .collect();
        if let Some(last) = words.last_mut() {
            last.0.push('\n');
        }
        // A block that fits goes whole into the current chunk, or starts the next one.
        if !cur.is_empty() && cur.len() + words.len() > target {
            let tail = cur[cur.len().saturating_sub(overlap)..].to_vec();
            chunks.push(std::mem::replace(&mut cur, tail));
        }
        for w in words {
            if cur.len() >= target {
                let tail = cur[cur.len() - overlap..].to_vec();
                chunks.push(std::mem::replace(&mut cur, tail));
            }
            cur.push(w);
        }
    }
    if chunks.is_empty() || cur.len() > overlap {
        chunks.push(cur);
    }
    chunks
        .into_iter()
        .map(|c| {
            // The section of the chunk's last word: a chunk that ends in a new section is
            // mostly about it; one inside a section takes that section's heading.
            let heading = c
                .last()
                .and_then(|w| w.1)
                .and_then(|i| headings.get(i))
                .filter(|h| !h.is_empty())
                .cloned();
            let words: Vec<String> = c.into_iter().map(|w| w.0).collect();
            (
                words.join(" ").replace("\n ", "\n").trim().to_owned(),
                heading,
            )
        })
        .filter(|c| !c.0.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_pack_headings_split_and_long_text_overlaps() {
        let text = "# Title\n\nFirst paragraph here.\n\nSecond one.\n\n# Next\n\nThird.";
        let c = chunk(
            text,
            ChunkParams {
                target: 6,
                overlap: 1,
            },
        );
        assert_eq!(c[0], "# Title\nFirst paragraph here.");
        assert!(c.iter().any(|x| x.contains("Third.")));
        let long: String = (0..100).map(|i| format!("w{i} ")).collect();
        let c = chunk(
            &long,
            ChunkParams {
                target: 40,
                overlap: 10,
            },
        );
        assert_eq!(c.len(), 3);
        assert!(c[1].starts_with("w30 "), "{}", c[1]);
        assert!(c.iter().all(|x| x.split_whitespace().count() <= 40));
        let all: std::collections::HashSet<&str> =
            c.iter().flat_map(|x| x.split_whitespace()).collect();
        assert_eq!(all.len(), 100, "no word lost");
        assert!(chunk("", ChunkParams::default()).is_empty());
    }
}
