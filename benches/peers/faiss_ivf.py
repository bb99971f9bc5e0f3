#!/usr/bin/env python3
"""FAISS IVF peers on GloVe-50, one thread, one query per call (like a service request).
Prints one JSON line per (index, nprobe, k_factor) with recall@10 and QPS, plus build lines.
Usage: OMP_WAIT_POLICY=PASSIVE faiss_ivf.py DATA_DIR [--queries N] [--nlist 1024] [--sweep 16:4,32:4]
       [--metric ip|l2] [--pq-m M] [--only NAME,...]"""
import argparse, json, os, sys, time
import numpy as np
import faiss
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

ap = argparse.ArgumentParser()
ap.add_argument('data'); ap.add_argument('--queries', type=int, default=2000)
ap.add_argument('--nlist', type=int, default=1024)
ap.add_argument('--sweep', default='16:4,32:4,48:4,64:4')
ap.add_argument('--only', default='')
ap.add_argument('--metric', default='ip', choices=['ip', 'l2'])
ap.add_argument('--pq-m', default='', help='sub-quantizers of the PQ specs (default: d for 4-bit, d/2 for 8-bit)')
a = ap.parse_args()
xb, xq, _, gt = common.queries(a.data, a.queries)
d = xb.shape[1]
metric = faiss.METRIC_INNER_PRODUCT if a.metric == 'ip' else faiss.METRIC_L2
# Build with both cores (as Quiver's background build does), search with one.
faiss.omp_set_num_threads(2)
m4 = int(a.pq_m) if a.pq_m else d
m8 = int(a.pq_m) if a.pq_m else d // 2
specs = {
    'faiss-IVF-Flat': f'IVF{a.nlist},Flat',
    'faiss-IVF-PQ-refine': f'IVF{a.nlist},PQ{m8}np,RFlat',
    'faiss-IVF-PQfs-refine': f'IVF{a.nlist},PQ{m4}x4fs,RFlat',
    # RaBitQ (1-bit rotation-based codes) with fast-scan, refined exactly: FAISS 1.15's answer.
    'faiss-IVF-RaBitQfs-refine': f'IVF{a.nlist},RaBitQfs,RFlat',
    # Extended RaBitQ: 4 bits per dimension (the 1-bit fast-scan code plus 3 bits that
    # refine the estimate), FAISS 1.15's multi-bit RaBitQ with fast-scan.
    'faiss-IVF-RaBitQfs4-refine': f'IVF{a.nlist},RaBitQfs4,RFlat',
}
for name, spec in specs.items():
    if a.only and name not in a.only.split(','):
        continue
    t = time.perf_counter()
    idx = faiss.index_factory(d, spec, metric)
    idx.train(xb); idx.add(xb)
    build = time.perf_counter() - t
    # Index size without the refine stage's flat copy of the vectors (Quiver re-ranks from the
    # segment's vectors, which it stores anyway), and with it.
    base = faiss.downcast_index(idx.base_index) if 'RFlat' in spec else idx
    print(json.dumps({"system": name, "event": "build", "seconds": build, "faiss": faiss.__version__, "spec": spec,
                      "index_bytes": len(faiss.serialize_index(base)),
                      "total_bytes": len(faiss.serialize_index(idx))}), flush=True)
    faiss.omp_set_num_threads(1)
    ps = faiss.ParameterSpace()
    for cfg in a.sweep.split(','):
        nprobe, kf = cfg.split(':')
        params = f'nprobe={nprobe}' + ('' if 'RFlat' not in spec else f',k_factor_rf={kf}')
        ps.set_index_parameters(idx, params)
        t = time.perf_counter(); I = []
        for q in xq:
            I.append(idx.search(q[None, :], 10)[1][0])
        qps = len(xq) / (time.perf_counter() - t)
        I = np.array(I)
        recall = float(np.mean([len(set(I[i]) & set(gt[i])) / 10 for i in range(len(xq))]))
        print(json.dumps({"system": name, "nprobe": int(nprobe), "refine": int(kf) if 'RFlat' in spec else None,
                          "recall10": recall, "qps": qps, "threads": 1}), flush=True)
    faiss.omp_set_num_threads(2)
