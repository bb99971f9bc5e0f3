#!/usr/bin/env python3
"""Qdrant's Rust engine in-process (qdrant-edge-py) as an HNSW peer on GloVe-50: one search thread,
one query per call (like a service request). Prints one JSON line per ef with recall@10 and QPS,
plus a build line with the on-disk size of the shard.
Usage: qdrant_edge_hnsw.py DATA_DIR [--queries N] [--ef 16,32,64] [--base-limit N]"""
import argparse, json, os, shutil, sys, tempfile, time
from importlib.metadata import version
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import numpy as np

try:
    import qdrant_edge as qe
except ImportError:
    sys.exit('qdrant-edge-py is not installed: pip install qdrant-edge-py==0.9.0')

ap = argparse.ArgumentParser()
ap.add_argument('data'); ap.add_argument('--queries', type=int, default=2000)
ap.add_argument('--ef', default='16,32,48,64,96,128')
ap.add_argument('--base-limit', type=int, default=0, help='use only the first N base rows (smoke tests)')
a = ap.parse_args()
xb, xq, _, gt = common.queries(a.data, a.queries, a.base_limit)
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
                      "segments": info.segments_count, "index_bytes": common.dir_bytes(path),
                      "wal_bytes": common.dir_bytes(f'{path}/wal')}), flush=True)
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
