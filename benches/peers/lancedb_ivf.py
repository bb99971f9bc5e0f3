#!/usr/bin/env python3
"""LanceDB IVF_PQ (embedded) as a peer on GloVe-50: search pinned to one core, one query per call
(like a service request). Prints one JSON line per (nprobe, refine) with recall@10 and QPS, plus a
build line with the size of the Lance dataset (vectors, which the refine step reads, and index).
Usage: lancedb_ivf.py DATA_DIR [--queries N] [--nlist 1024] [--pq-m 25] [--sweep 16:4,32:4] [--base-limit N]"""
import argparse, json, os, shutil, sys, tempfile, time
from importlib.metadata import version
import numpy as np
try:
    import lancedb, pyarrow as pa
    from lancedb.index import IvfPq
except ImportError:
    sys.exit('lancedb is not installed: pip install lancedb pyarrow')

def fvecs(p):
    a = np.fromfile(p, dtype=np.int32); d = a[0]
    return a.reshape(-1, d + 1)[:, 1:].view(np.float32).copy()

def dir_bytes(path):
    return sum(os.stat(os.path.join(r, f)).st_blocks * 512 for r, _, fs in os.walk(path) for f in fs)

def pin_to_one_core():
    # Lance runs a query on its own thread pools (about 40 threads here) and has no per-query thread
    # knob: pinning every thread of the process bounds the search to one core, and threads created
    # later inherit the mask.
    core = {min(os.sched_getaffinity(0))}
    for tid in os.listdir('/proc/self/task'):
        os.sched_setaffinity(int(tid), core)

ap = argparse.ArgumentParser()
ap.add_argument('data'); ap.add_argument('--queries', type=int, default=2000)
ap.add_argument('--nlist', type=int, default=1024)
ap.add_argument('--pq-m', type=int, default=25)
ap.add_argument('--sweep', default='16:4,32:4,48:4,64:4')
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
sweep = [tuple(map(int, cfg.split(':'))) for cfg in a.sweep.split(',')]

path = tempfile.mkdtemp(prefix='lancedb-')
try:
    # Build with both cores (as Quiver's background build does): Lance uses every core it sees.
    t = time.perf_counter()
    data = pa.table({'id': pa.array(np.arange(len(xb), dtype=np.int64)),
                     'vector': pa.FixedSizeListArray.from_arrays(pa.array(xb.ravel()), d)})
    tbl = lancedb.connect(path).create_table('glove', data=data)
    # The first argument is the column (it is named `metric` for the deprecated API; with a config,
    # vector_column_name is ignored and 'l2' taken as a column name).
    tbl.create_index('vector', config=IvfPq(distance_type='cosine', num_partitions=a.nlist, num_sub_vectors=a.pq_m))
    build = time.perf_counter() - t
    print(json.dumps({"system": "lancedb-ivfpq", "event": "build", "seconds": build, "lancedb": version('lancedb'),
                      "nlist": a.nlist, "pq_m": a.pq_m, "index_bytes": dir_bytes(path),
                      "ivfpq_bytes": tbl.list_indices()[0].size_bytes}), flush=True)
    pin_to_one_core()

    def search(q, nprobe, refine):
        # A metric other than the index's (l2, say) silently skips the index and scans every row:
        # naming it guards the measurement. Without a select the vectors come back with each hit.
        return (tbl.search(q).distance_type('cosine').nprobes(nprobe).refine_factor(refine)
                .select(['id', '_distance']).limit(10).to_arrow()['id'].to_pylist())

    # The index and its partitions load lazily on first use: one untimed pass at the widest
    # setting measures the warm state a service runs in.
    for q in xq:
        search(q, *max(sweep))
    for nprobe, refine in sweep:
        t = time.perf_counter()
        I = [search(q, nprobe, refine) for q in xq]
        qps = len(xq) / (time.perf_counter() - t)
        recall = float(np.mean([len(set(I[i]) & set(gt[i].tolist())) / 10 for i in range(len(xq))]))
        print(json.dumps({"system": "lancedb-ivfpq", "nprobe": nprobe, "refine": refine,
                          "recall10": recall, "qps": qps, "threads": 1}), flush=True)
finally:
    shutil.rmtree(path, ignore_errors=True)
