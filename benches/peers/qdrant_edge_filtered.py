#!/usr/bin/env python3
"""Qdrant's Rust engine in-process (qdrant-edge-py) as a filtered-search peer on GloVe-50: HNSW with
payload indexes on kw (keyword), num (integer) and tags (keyword), payloads and filters from
glove_payloads.py. One search thread, one query per call (like a service request). Prints a build
line, then one JSON line per (ef, filter) with recall@10 against the exact filtered top-10, and QPS;
filter "none" is the unfiltered run.
Usage: qdrant_edge_filtered.py DATA_DIR [--queries N] [--ef 32,64] [--full-scan-threshold KB] [--base-limit N]"""
import argparse, json, os, shutil, sys, tempfile, time
from importlib.metadata import version
try:
    import qdrant_edge as qe
except ImportError:
    sys.exit('qdrant-edge-py is not installed: pip install qdrant-edge-py==0.9.0')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import glove_payloads as gp

def qdrant_filter(desc):
    # The shared descriptions are `field = "value"` or `field < number`: a keyword match or a range.
    field, op, value = desc.split(' ', 2)
    if op == '=':
        cond = qe.FieldCondition(field, match=qe.MatchValue(value.strip('"')))
    elif op == '<':
        cond = qe.FieldCondition(field, range=qe.RangeFloat(lt=float(value)))
    else:
        raise ValueError(f'no Qdrant form for filter {desc!r}')
    return qe.Filter(must=[cond])

ap = argparse.ArgumentParser()
ap.add_argument('data'); ap.add_argument('--queries', type=int, default=1000)
ap.add_argument('--ef', default='32,64,128,256')
# Qdrant's planner searches a filtered query exactly over the payload index's matches when it
# estimates fewer matching vectors than this (in KB of vectors; 10000 KB is Qdrant's default, about
# 51k GloVe vectors), and through the filtered HNSW graph otherwise. 1 forces the graph every time.
ap.add_argument('--full-scan-threshold', type=int, default=10000, help='KB (Qdrant default 10000)')
ap.add_argument('--base-limit', type=int, default=0, help='use only the first N base rows (smoke tests)')
a = ap.parse_args()
xb, xq, cols, truth = gp.load(a.data, a.queries, a.base_limit)
d = xb.shape[1]
filters = {'none': None, **{name: qdrant_filter(desc) for name, (desc, _) in gp.FILTERS.items()}}

path = tempfile.mkdtemp(prefix='qdrant-edge-')
try:
    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=d, distance=qe.Distance.Cosine),
        # Build with both cores (as Quiver's background build does). payload_m is left at its
        # default (m): the graph gets Qdrant's extra per-payload-value links for the indexed fields.
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=a.full_scan_threshold,
                                       max_indexing_threads=2),
        # indexing_threshold 0 would mean "never index": 1 KB indexes every segment, whatever its size.
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
        # Per-segment reads run in this pool: one thread makes a query use one core.
        max_search_threads=1)
    t = time.perf_counter()
    shard = qe.EdgeShard.create(path, config)
    # Payload indexes first, as Qdrant advises: the HNSW build then knows the fields and adds its
    # filter-aware links, and the planner has cardinality estimates.
    for field, schema in [('kw', qe.PayloadSchemaType.Keyword), ('num', qe.PayloadSchemaType.Integer),
                          ('tags', qe.PayloadSchemaType.Keyword)]:
        shard.update(qe.UpdateOperation.create_field_index(field, schema))
    for s in range(0, len(xb), 2000):
        pts = [qe.Point(i, v, gp.payload(cols, i)) for i, v in enumerate(xb[s:s + 2000].tolist(), start=s)]
        shard.update(qe.UpdateOperation.upsert_points(pts))
    shard.optimize()
    shard.flush()
    build = time.perf_counter() - t
    info = shard.info()
    assert info.indexed_vectors_count == len(xb), f'only {info.indexed_vectors_count} of {len(xb)} vectors indexed'
    print(json.dumps({"system": "qdrant-edge-hnsw", "event": "build", "seconds": build,
                      "qdrant_edge": version('qdrant-edge-py'), "m": 16, "ef_construct": 100,
                      "full_scan_kb": a.full_scan_threshold, "segments": info.segments_count,
                      "index_bytes": common.dir_bytes(path), "wal_bytes": common.dir_bytes(f'{path}/wal')}), flush=True)
    for ef in map(int, a.ef.split(',')):
        params = qe.SearchParams(hnsw_ef=ef)
        for filt, (selectivity, gt) in truth.items():
            t = time.perf_counter(); I = []
            for q in xq:
                res = shard.query(qe.QueryRequest(limit=10, query=qe.Query.Nearest(q.tolist()), filter=filters[filt],
                                                  params=params, with_payload=False, with_vector=False))
                I.append([p.id for p in res])
            qps = len(xq) / (time.perf_counter() - t)
            print(json.dumps({"system": "qdrant-edge-hnsw", "filter": filt, "selectivity": selectivity, "ef": ef,
                              "full_scan_kb": a.full_scan_threshold, "recall10": gp.recall(I, gt), "qps": qps,
                              "threads": 1}), flush=True)
    shard.close()
finally:
    shutil.rmtree(path, ignore_errors=True)
