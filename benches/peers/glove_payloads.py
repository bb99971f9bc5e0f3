"""Synthetic payloads for GloVe-50 filtered-search benchmarks, shared by every harness (the Rust
filter-bench mirrors `payload` exactly): a keyword with 1,000 values, a uniform integer 0..999,
and a two-element tag array, all derived from the row number by a multiplicative hash.
The four filters and their selectivities:
  0.1%  kw = "k42"
  1%    num < 10
  10%   num < 100
  50%   num < 500"""
import numpy as np

import common


def hashes(n):
    i = np.arange(n, dtype=np.uint64)
    return (i * np.uint64(2654435761)) % np.uint64(1 << 32)


def columns(n):
    """The payload columns for rows 0..n as numpy arrays: kw (int 0..999, the keyword is
    f"k{kw}"), num (0..999), tag0 and tag1 (0..9, the tags are f"t{x}")."""
    h = hashes(n)
    return {
        'kw': (h % np.uint64(1000)).astype(np.int64),
        'num': ((h >> np.uint64(10)) % np.uint64(1000)).astype(np.int64),
        'tag0': ((h >> np.uint64(20)) % np.uint64(10)).astype(np.int64),
        'tag1': ((h >> np.uint64(24)) % np.uint64(10)).astype(np.int64),
    }


def payload(cols, i):
    return {'kw': f"k{cols['kw'][i]}", 'num': int(cols['num'][i]),
            'tags': [f"t{cols['tag0'][i]}", f"t{cols['tag1'][i]}"]}


# name -> (description, mask function over the columns)
FILTERS = {
    '0.1%': ('kw = "k42"', lambda c: c['kw'] == 42),
    '1%': ('num < 10', lambda c: c['num'] < 10),
    '10%': ('num < 100', lambda c: c['num'] < 100),
    '50%': ('num < 500', lambda c: c['num'] < 500),
}


def filtered_truth(xb, xq, mask=None, k=10, budget=1 << 25):
    """Exact top-k row ids by inner product (cosine: the vectors are unit-norm) among the rows where
    mask is true (every row if None), best first; -1 pads a query's row when fewer than k rows match.
    Queries go in chunks so the score matrix stays under `budget` floats (128 MB) at any selectivity."""
    rows = np.arange(len(xb)) if mask is None else np.flatnonzero(mask)
    sub = xb if mask is None else xb[rows]
    out = np.full((len(xq), k), -1, dtype=np.int64)
    kk = min(k, len(rows))
    if kk == 0:
        return out
    step = max(1, budget // len(rows))
    for s in range(0, len(xq), step):
        sims = xq[s:s + step] @ sub.T
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[s:s + step, :kk] = rows[np.take_along_axis(top, order, axis=1)]
    return out


def recall(found, truth):
    """Mean recall@k: the share of each query's true ids (without the -1 padding) that was found."""
    r = []
    for got, want in zip(found, truth):
        want = set(int(x) for x in want if x >= 0)
        r.append(len(want & set(int(x) for x in got)) / len(want) if want else 1.0)
    return float(np.mean(r))


def load(data, queries, base_limit=0):
    """The base vectors (the first base_limit rows if set), the queries, the payload columns, and per
    filter ('none' first, then FILTERS) a pair (measured selectivity, exact top-10 ids)."""
    xb, xq, _, gt = common.queries(data, queries, base_limit)
    truth = {'none': (1.0, gt)}
    cols = columns(len(xb))
    for name, (_, mask_fn) in FILTERS.items():
        mask = mask_fn(cols)
        truth[name] = (float(mask.mean()), filtered_truth(xb, xq, mask))
    return xb, xq, cols, truth
