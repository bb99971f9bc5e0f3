#!/usr/bin/env python3
"""FAISS IVF peers for filtered search on GloVe-50 (payloads and filters from glove_payloads.py): one
thread, one query per call (like a service request), the filter passed as an IDSelectorBitmap in the
search parameters. Prints a build line per index, then one JSON line per (index, nprobe, k_factor,
filter) with recall@10 against the exact filtered top-10, and QPS; filter "none" is the unfiltered run.
Usage: OMP_WAIT_POLICY=PASSIVE faiss_filtered.py DATA_DIR [--queries N] [--nlist 1024]
       [--sweep 16:4,32:4] [--only NAME,...] [--base-limit N]"""
import argparse, json, os, sys, time
import numpy as np
import faiss
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glove_payloads as gp

ap = argparse.ArgumentParser()
ap.add_argument('data'); ap.add_argument('--queries', type=int, default=1000)
ap.add_argument('--nlist', type=int, default=1024)
ap.add_argument('--sweep', default='16:4,32:4,64:4,128:4,256:4', help='nprobe:k_factor pairs')
ap.add_argument('--only', default='', help='comma-separated system names to run')
ap.add_argument('--base-limit', type=int, default=0, help='use only the first N base rows (smoke tests)')
a = ap.parse_args()
xb, xq, cols, truth = gp.load(a.data, a.queries, a.base_limit)
d = xb.shape[1]
sweep = [tuple(map(int, cfg.split(':'))) for cfg in a.sweep.split(',')]
# FAISS has no payload store: a filter reaches it as a bitmap over row ids (bit i of byte i/8, least
# significant first). The bitmap is computed once per filter outside the timed loop, which is FAISS's
# best case: a database evaluates the filter for each query. The selector keeps a raw pointer into
# the numpy array, so `bitmaps` must outlive it.
bitmaps = {name: np.packbits(mask_fn(cols), bitorder='little') for name, (_, mask_fn) in gp.FILTERS.items()}
selectors = {name: faiss.IDSelectorBitmap(len(xb), faiss.swig_ptr(b)) for name, b in bitmaps.items()}
selectors['none'] = None

# Build with both cores (as Quiver's background build does), search with one.
faiss.omp_set_num_threads(2)
specs = {
    'faiss-IVF-Flat-idsel': f'IVF{a.nlist},Flat',
    'faiss-IVF-PQfs-refine-idsel': f'IVF{a.nlist},PQ{d}x4fs,RFlat',
}
for name, spec in specs.items():
    if a.only and name not in a.only.split(','):
        continue
    refine = 'RFlat' in spec
    t = time.perf_counter()
    idx = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    idx.train(xb); idx.add(xb)
    build = time.perf_counter() - t
    # Index size without the refine stage's flat copy of the vectors (Quiver re-ranks from the
    # segment's vectors, which it stores anyway), and with it.
    base = faiss.downcast_index(idx.base_index) if refine else idx
    print(json.dumps({"system": name, "event": "build", "seconds": build, "faiss": faiss.__version__, "spec": spec,
                      "index_bytes": len(faiss.serialize_index(base)),
                      "total_bytes": len(faiss.serialize_index(idx))}), flush=True)
    faiss.omp_set_num_threads(1)
    skip = set()
    for nprobe, kf in sweep:
        for filt, (selectivity, gt) in truth.items():
            if filt in skip:
                continue
            sel = selectors[filt]
            ivf = faiss.SearchParametersIVF(nprobe=nprobe, sel=sel) if sel else faiss.SearchParametersIVF(nprobe=nprobe)
            # IndexRefine searches its base index with base_index_params: the selector goes there,
            # and the refine stage only re-ranks the candidates that passed it.
            params = faiss.IndexRefineSearchParameters(k_factor=kf, base_index_params=ivf) if refine else ivf
            try:
                idx.search(xq[:1], 10, params=params)
            except RuntimeError as e:
                # Not every index type takes a selector: say which, and go on with the others.
                print(f'note: {name} {spec}: filter {filt} skipped: {str(e).strip().splitlines()[-1]}', file=sys.stderr)
                skip.add(filt)
                continue
            t = time.perf_counter(); I = []
            for q in xq:
                I.append(idx.search(q[None, :], 10, params=params)[1][0])
            qps = len(xq) / (time.perf_counter() - t)
            print(json.dumps({"system": name, "filter": filt, "selectivity": selectivity, "nprobe": nprobe,
                              "refine": kf if refine else None, "recall10": gp.recall(I, gt), "qps": qps,
                              "threads": 1}), flush=True)
    faiss.omp_set_num_threads(2)
