#!/usr/bin/env python3
"""LanceDB IVF_PQ (embedded) as a filtered-search peer on GloVe-50: payload columns from
glove_payloads.py with scalar indexes (BTREE on num, BITMAP on kw, LABEL_LIST on tags), searched with
`.where(sql, prefilter=True)`, pinned to one core, one query per call (like a service request).
Prints a build line, then one JSON line per (nprobe, refine, filter) with recall@10 against the exact
filtered top-10, and QPS; filter "none" is the unfiltered run.
Usage: lancedb_filtered.py DATA_DIR [--queries N] [--nlist 1024] [--pq-m 25] [--sweep 32:4,64:4]
       [--max-nprobes M] [--base-limit N]"""
import argparse, json, os, shutil, sys, tempfile, time
from importlib.metadata import version
import numpy as np
try:
    import lancedb, pyarrow as pa
    from lancedb.index import IvfPq, BTree, Bitmap, LabelList
except ImportError:
    sys.exit('lancedb is not installed: pip install lancedb pyarrow')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import glove_payloads as gp

ap = argparse.ArgumentParser()
ap.add_argument('data'); ap.add_argument('--queries', type=int, default=1000)
ap.add_argument('--nlist', type=int, default=1024)
ap.add_argument('--pq-m', type=int, default=25)
ap.add_argument('--sweep', default='32:4,64:4', help='nprobe:refine_factor pairs')
# Lance can probe more partitions than the minimum when a narrow filter leaves fewer than k hits.
# By default the probe count is fixed (minimum = maximum = nprobe, like FAISS); 0 lets it widen freely.
ap.add_argument('--max-nprobes', type=int, default=-1, help='default: nprobe; 0: unbounded')
ap.add_argument('--base-limit', type=int, default=0, help='use only the first N base rows (smoke tests)')
a = ap.parse_args()
xb, xq, cols, truth = gp.load(a.data, a.queries, a.base_limit)
d = xb.shape[1]
sweep = [tuple(map(int, cfg.split(':'))) for cfg in a.sweep.split(',')]
# The shared descriptions are already SQL once the keyword's quotes are single: kw = 'k42', num < 10.
where = {'none': None, **{name: desc.replace('"', "'") for name, (desc, _) in gp.FILTERS.items()}}

path = tempfile.mkdtemp(prefix='lancedb-')
try:
    # Build with both cores (as Quiver's background build does): Lance uses every core it sees.
    t = time.perf_counter()
    tags = [[f't{x}', f't{y}'] for x, y in zip(cols['tag0'].tolist(), cols['tag1'].tolist())]
    data = pa.table({'id': pa.array(np.arange(len(xb), dtype=np.int64)),
                     'vector': pa.FixedSizeListArray.from_arrays(pa.array(xb.ravel()), d),
                     'kw': pa.array([f'k{x}' for x in cols['kw'].tolist()]),
                     'num': pa.array(cols['num']),
                     'tags': pa.array(tags, type=pa.list_(pa.string()))})
    tbl = lancedb.connect(path).create_table('glove', data=data)
    # The first argument is the column (it is named `metric` for the deprecated API; with a config,
    # vector_column_name is ignored and 'l2' taken as a column name).
    tbl.create_index('vector', config=IvfPq(distance_type='cosine', num_partitions=a.nlist, num_sub_vectors=a.pq_m))
    vector_build = time.perf_counter() - t
    # Scalar indexes: a prefilter is then resolved from them instead of a scan of the columns.
    # BTREE serves ranges, BITMAP low-cardinality equality, LABEL_LIST array_has_any/all.
    tbl.create_index('num', config=BTree())
    tbl.create_index('kw', config=Bitmap())
    tbl.create_index('tags', config=LabelList())
    build = time.perf_counter() - t
    sizes = {i.name: i.size_bytes for i in tbl.list_indices()}
    print(json.dumps({"system": "lancedb-ivfpq-prefilter", "event": "build", "seconds": build,
                      "vector_index_seconds": vector_build, "lancedb": version('lancedb'),
                      "nlist": a.nlist, "pq_m": a.pq_m, "index_bytes": common.dir_bytes(path), "indices": sizes}), flush=True)
    common.pin_to_one_core()

    def search(q, nprobe, refine, sql):
        # A metric other than the index's (l2, say) silently skips the index and scans every row:
        # naming it guards the measurement. Without a select the vectors come back with each hit.
        maxp = nprobe if a.max_nprobes < 0 else a.max_nprobes
        qb = (tbl.search(q).distance_type('cosine').minimum_nprobes(nprobe).maximum_nprobes(maxp)
              .refine_factor(refine).select(['id', '_distance']).limit(10))
        if sql:
            qb = qb.where(sql, prefilter=True)
        return qb.to_arrow()['id'].to_pylist()

    # The index, its partitions and the scalar indexes load lazily on first use: one untimed pass
    # at the widest setting (and a short one per filter) measures the warm state a service runs in.
    for filt, sql in where.items():
        for q in (xq if sql is None else xq[:100]):
            search(q, *max(sweep), sql)
    for nprobe, refine in sweep:
        for filt, (selectivity, gt) in truth.items():
            t = time.perf_counter()
            I = [search(q, nprobe, refine, where[filt]) for q in xq]
            qps = len(xq) / (time.perf_counter() - t)
            print(json.dumps({"system": "lancedb-ivfpq-prefilter", "filter": filt, "selectivity": selectivity,
                              "nprobe": nprobe, "max_nprobes": nprobe if a.max_nprobes < 0 else a.max_nprobes,
                              "refine": refine, "recall10": gp.recall(I, gt), "qps": qps, "threads": 1}), flush=True)
finally:
    shutil.rmtree(path, ignore_errors=True)
