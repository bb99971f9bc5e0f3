#!/usr/bin/env python3
"""A third retrieval QA set with relevance judgments, from the registries: FanOutQA's dev split
(PyPI wheel fanoutqa==1.1.1, fetched with `pip download --no-deps`). Its multi-hop questions are
decomposed by their authors into single-hop sub-questions, each with the Wikipedia page that
answers it. The sub-questions whose page is one of the 10,033 articles of the Wikipedia set
(benches/rag/make_wiki_qa.py, in WIKI) become OUT/questions.jsonl, with that page as the
expected document: human-written questions, judged by the set's authors, not by us.
Usage: make_fanout_qa.py WIKI OUT"""
import glob, json, os, subprocess, sys, tempfile, zipfile

wiki, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
src = os.path.join(out, 'fanout-final-dev.json')
if not os.path.exists(src):
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', 'fanoutqa==1.1.1', '-d', d], check=True)
        with zipfile.ZipFile(glob.glob(os.path.join(d, '*.whl'))[0]) as z, open(src, 'wb') as f:
            f.write(z.read('fanoutqa/data/fanout-final-dev.json'))
titles = {json.loads(l)['id'] for l in open(os.path.join(wiki, 'docs.jsonl'))}
seen, rows = set(), []


def walk(node):
    for s in node.get('decomposition', []):
        ev = s.get('evidence') or {}
        if not s.get('decomposition') and ev.get('title') in titles and s['question'] not in seen:
            seen.add(s['question'])
            rows.append({'question': s['question'], 'expected_documents': [ev['title']]})
        walk(s)


for q in json.load(open(src)):
    walk(q)
with open(os.path.join(out, 'questions.jsonl'), 'w') as f:
    for r in rows:
        f.write(json.dumps(r) + '\n')
print(f'{len(rows)} FanOutQA sub-questions answered by an article of the Wikipedia set, in {out}', file=sys.stderr)
