#!/usr/bin/env python3
"""FAISS IndexFlatIP on GloVe-50, the exact-search peer for Quiver's exact path.
Prints single-query QPS (one query per call, like a service request) and batched QPS,
with recall@10 against gt100.ivecs, as a JSON line.
Usage: OMP_WAIT_POLICY=PASSIVE faiss_flat.py DATA_DIR [--queries N] [--rounds R] [--threads T]"""
import argparse, json, time
import numpy as np
import faiss

def fvecs(p):
    a = np.fromfile(p, dtype=np.int32); d = a[0]
    return a.reshape(-1, d + 1)[:, 1:].view(np.float32).copy()

ap = argparse.ArgumentParser()
ap.add_argument('data'); ap.add_argument('--queries', type=int, default=1000)
ap.add_argument('--rounds', type=int, default=3); ap.add_argument('--threads', type=int, default=1)
a = ap.parse_args()
faiss.omp_set_num_threads(a.threads)
xb = fvecs(f'{a.data}/base.fvecs'); xq_all = fvecs(f'{a.data}/query.fvecs')
# An even stride over the query file, the same rows as Quiver's benches (read_queries): the file
# is in word-frequency order and a prefix would be easier than the whole set.
n = max(1, min(a.queries, len(xq_all))); pick = np.arange(n) * (len(xq_all) // n)
xq = np.ascontiguousarray(xq_all[pick])
gt = fvecs(f'{a.data}/gt100.ivecs').view(np.int32)[pick, :10]
idx = faiss.IndexFlatIP(xb.shape[1]); idx.add(xb)
single, batch = [], []
for _ in range(a.rounds):
    t = time.perf_counter(); I1 = []
    for q in xq:
        I1.append(idx.search(q[None, :], 10)[1][0])
    single.append(len(xq) / (time.perf_counter() - t))
    t = time.perf_counter()
    for s in range(0, len(xq), 100):
        idx.search(xq[s:s + 100], 10)
    batch.append(len(xq) / (time.perf_counter() - t))
I1 = np.array(I1)
recall = np.mean([len(set(I1[i]) & set(gt[i])) / 10 for i in range(len(xq))])
print(json.dumps({"system": "faiss-IndexFlatIP", "faiss": faiss.__version__, "queries": len(xq), "threads": a.threads,
                  "recall10": float(recall), "qps_single": float(np.median(single)), "qps_batch": float(np.median(batch))}))
