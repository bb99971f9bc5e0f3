#!/usr/bin/env python3
"""LanceDB IVF_PQ (embedded) as a peer on GloVe-50: search pinned to one core, one query per call
(like a service request). Prints one JSON line per (nprobe, refine) with recall@10 and QPS, plus a
build line with the size of the Lance dataset (vectors, which the refine step reads, and index).
Usage: lancedb_ivf.py DATA_DIR [--queries N] [--nlist 1024] [--pq-m 25] [--sweep 16:4,32:4] [--base-limit N]"""
import argparse, json, os, shutil, sys, tempfile, time
from importlib.metadata import version
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import numpy as np
try:
    import lancedb, pyarrow as pa
    from lancedb.index import IvfPq
except ImportError:
    sys.exit('lancedb is not installed: pip install lancedb pyarrow')

ap = argparse.ArgumentParser()
ap.add_argument('data'); ap.add_argument('--queries', type=int, default=2000)
ap.add_argument('--nlist', type=int, default=1024)
ap.add_argument('--pq-m', type=int, default=25)
ap.add_argument('--sweep', default='16:4,32:4,48:4,64:4')
ap.add_argument('--base-limit', type=int, default=0, help='use only the first N base rows (smoke tests)')
a = ap.parse_args()
xb, xq, _, gt = common.queries(a.data, a.queries, a.base_limit)
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
                      "nlist": a.nlist, "pq_m": a.pq_m, "index_bytes": common.dir_bytes(path),
                      "ivfpq_bytes": tbl.list_indices()[0].size_bytes}), flush=True)
    common.pin_to_one_core()

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
