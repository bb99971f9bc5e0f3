#!/usr/bin/env python3
"""Qdrant's Rust engine in-process (qdrant-edge-py) as an HNSW peer on GloVe-50: one search thread,
one query per call (like a service request). Prints one JSON line per ef with recall@10 and QPS,
plus a build line with the on-disk size of the shard.
Usage: qdrant_edge_hnsw.py DATA_DIR [--queries N] [--ef 16,32,64] [--base-limit N]"""
import argparse, json, os, shutil, sys, tempfile, time
from importlib.metadata import version
import numpy as np

try:
    import qdrant_edge as qe
except ImportError:
    sys.exit('qdrant-edge-py is not installed: pip install qdrant-edge-py==0.9.0')

def fvecs(p):
    a = np.fromfile(p, dtype=np.int32); d = a[0]
    return a.reshape(-1, d + 1)[:, 1:].view(np.float32).copy()

def dir_bytes(path):
    # Allocated blocks, as du counts them: the WAL and the payload mmap are preallocated sparse
    # files, whose apparent size (143 MB for 20k vectors) says nothing about the disk used.
    return sum(os.stat(os.path.join(r, f)).st_blocks * 512 for r, _, fs in os.walk(path) for f in fs)

ap = argparse.ArgumentParser()
ap.add_argument('data'); ap.add_argument('--queries', type=int, default=2000)
ap.add_argument('--ef', default='16,32,48,64,96,128')
ap.add_argument('--base-limit', type=int, default=0, help='use only the first N base rows (smoke tests)')
a = ap.parse_args()
xb = fvecs(f'{a.data}/base.fvecs'); xq_all = fvecs(f'{a.data}/query.fvecs')
# An even stride over the query file, the same rows as Quiver's benches (read_queries): the file
# is in word-frequency order and a prefix would be easier than the whole set.
n = max(1, min(a.queries, len(xq_all))); pick = np.arange(n) * (len(xq_all) // n)
xq = np.ascontiguousarray(xq_all[pick])
if a.base_limit:
    # gt100 is over the whole base: recompute it exactly over the prefix (vectors are unit-norm).
    xb = xb[:a.base_limit]
    gt = np.argsort(-(xq @ xb.T), axis=1)[:, :10]
else:
    gt = fvecs(f'{a.data}/gt100.ivecs').view(np.int32)[pick, :10]
d = xb.shape[1]

path = tempfile.mkdtemp(prefix='qdrant-edge-')
try:
    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=d, distance=qe.Distance.Cosine),
        # Build with both cores (as Quiver's background build does). full_scan_threshold is in KB:
        # at 1 every segment is searched through its graph, so a small --base-limit still tests HNSW.
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=1, max_indexing_threads=2),
        # indexing_threshold 0 would mean "never index": 1 KB indexes every segment, whatever its size.
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
        # Per-segment reads run in this pool: one thread makes a query use one core.
        max_search_threads=1)
    t = time.perf_counter()
    shard = qe.EdgeShard.create(path, config)
    for s in range(0, len(xb), 2000):
        pts = [qe.Point(i, v) for i, v in enumerate(xb[s:s + 2000].tolist(), start=s)]
        shard.update(qe.UpdateOperation.upsert_points(pts))
    shard.optimize()
    shard.flush()
    build = time.perf_counter() - t
    info = shard.info()
    assert info.indexed_vectors_count == len(xb), f'only {info.indexed_vectors_count} of {len(xb)} vectors indexed'
    print(json.dumps({"system": "qdrant-edge-hnsw", "event": "build", "seconds": build,
                      "qdrant_edge": version('qdrant-edge-py'), "m": 16, "ef_construct": 100,
                      "segments": info.segments_count, "index_bytes": dir_bytes(path),
                      "wal_bytes": dir_bytes(f'{path}/wal')}), flush=True)
    for ef in map(int, a.ef.split(',')):
        params = qe.SearchParams(hnsw_ef=ef)
        t = time.perf_counter(); I = []
        for q in xq:
            res = shard.query(qe.QueryRequest(limit=10, query=qe.Query.Nearest(q.tolist()), params=params,
                                              with_payload=False, with_vector=False))
            I.append([p.id for p in res])
        qps = len(xq) / (time.perf_counter() - t)
        recall = float(np.mean([len(set(I[i]) & set(gt[i].tolist())) / 10 for i in range(len(xq))]))
        print(json.dumps({"system": "qdrant-edge-hnsw", "ef": ef, "recall10": recall, "qps": qps, "threads": 1}),
              flush=True)
    shard.close()
finally:
    shutil.rmtree(path, ignore_errors=True)
