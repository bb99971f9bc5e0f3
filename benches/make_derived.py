#!/usr/bin/env python3
"""A larger ANN set derived from a real one (issue 17's 1M+ points), for sizes the registries do
not ship. The real base rows come first, unchanged; each further row is a real row moved part of
the way toward another random real row and renormalised:
    x = normalise(b_i + t * (b_j - b_i)),  i, j uniform, t uniform in [0, T) (default 0.3)
so every derived vector lies near the real data's manifold, is no copy of a real row, and keeps
its norm. The queries are the real set's own (unseen by the base), with the exact top-100
computed over the new base by inner product (the vectors are unit length).
Usage: make_derived.py SRC OUT --rows N [--queries 2000] [--spread 0.3] [--seed 17]"""
import argparse, os, sys, time
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_glove50 import exact_top, write_vecs  # noqa: E402
from make_minilm import read_fvecs  # noqa: E402

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('src'); ap.add_argument('out')
    ap.add_argument('--rows', type=int, required=True)
    ap.add_argument('--queries', type=int, default=2000)
    ap.add_argument('--spread', type=float, default=0.3)
    ap.add_argument('--seed', type=int, default=17)
    a = ap.parse_args()
    xb = read_fvecs(os.path.join(a.src, 'base.fvecs'))
    xq = read_fvecs(os.path.join(a.src, 'query.fvecs'))[:a.queries]
    n0 = len(xb)
    if a.rows <= n0:
        sys.exit(f'--rows {a.rows}: the real set already has {n0}')
    rng = np.random.default_rng(a.seed)
    os.makedirs(a.out, exist_ok=True)
    parts = [xb]
    left = a.rows - n0
    while left > 0:
        m = min(left, 1_000_000)
        i, j = rng.integers(0, n0, m), rng.integers(0, n0, m)
        t = rng.uniform(0, a.spread, (m, 1)).astype(np.float32)
        x = xb[i] + t * (xb[j] - xb[i])
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        parts.append(x.astype(np.float32)); left -= m
    base = np.concatenate(parts)
    t0 = time.time()
    I, D = exact_top(xq, base)
    write_vecs(f'{a.out}/base.fvecs', base, np.float32); write_vecs(f'{a.out}/query.fvecs', xq, np.float32)
    write_vecs(f'{a.out}/gt100.ivecs', I, np.int32); write_vecs(f'{a.out}/gt100_dist.fvecs', D, np.float32)
    print(f'wrote {a.out}: base {base.shape} ({n0} real), query {xq.shape}, ground truth in {time.time() - t0:.0f}s')

if __name__ == '__main__':
    main()
