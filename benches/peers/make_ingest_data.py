#!/usr/bin/env python3
"""Inputs of the bulk-ingest benchmark, in OUT_DIR: glove50.{parquet,npy} from the GloVe-50 base
(390k x 50) and synth128.{parquet,npy}, seeded standard-normal float32 vectors (2M x 128 by default).
Parquet: id uint64 (the row number), vector fixed_size_list<float32>[d], and payload columns tenant
string ("t{id % 100}") and n int64 (id % 1000), in row groups of 64k rows. .npy: the vectors alone,
float32 in C order, ids being the row numbers. Files are written a chunk at a time (memory stays
bounded: the 2M x 128 set is 1 GB) under a temporary name and renamed when complete, so an
interrupted run leaves no truncated file behind; files that already exist are skipped.
Usage: make_ingest_data.py OUT_DIR [--glove DIR] [--glove-limit N] [--synth-rows N] [--seed S]"""
import argparse, os
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CHUNK = 65536  # rows per chunk, and per Parquet row group
TENANTS = pa.array([f't{i}' for i in range(100)])

def glove_chunks(path, limit):
    # fvecs: each row is an int32 dimension then the floats. A memmap reads only the rows asked for.
    d = int(np.fromfile(path, dtype=np.int32, count=1)[0])
    rows = np.memmap(path, dtype=np.float32, mode='r').reshape(-1, d + 1)
    n = min(limit, len(rows)) if limit else len(rows)
    for s in range(0, n, CHUNK):
        yield rows[s:min(n, s + CHUNK), 1:]  # column 0 is the int32 dimension, not a float

def synth_chunks(rows, d, seed):
    # One generator drawn in order: the same seed and CHUNK give the same vectors.
    rng = np.random.default_rng(seed)
    for s in range(0, rows, CHUNK):
        yield rng.standard_normal((min(CHUNK, rows - s), d), dtype=np.float32)

def record_batch(start, x):
    ids = np.arange(start, start + len(x), dtype=np.uint64)
    return pa.record_batch({
        'id': pa.array(ids),
        'vector': pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).ravel()), x.shape[1]),
        'tenant': pc.take(TENANTS, pa.array(ids % 100)),
        'n': pa.array((ids % 1000).astype(np.int64)),
    })

def write(out, name, chunks, rows, d):
    """Writes OUT/name.parquet and OUT/name.npy in one pass over the chunks (whichever is missing)."""
    pq_path, npy_path = f'{out}/{name}.parquet', f'{out}/{name}.npy'
    todo = [p for p in (pq_path, npy_path) if not os.path.exists(p)]
    for p in (pq_path, npy_path):
        if p not in todo:
            have = pq.ParquetFile(p).metadata.num_rows if p.endswith('.parquet') else np.load(p, mmap_mode='r').shape[0]
            note = '' if have == rows else f' -- WARNING: {rows} rows asked for; delete it to rewrite'
            print(f'{p}: exists ({have} rows), skipped{note}')
    if not todo:
        return
    writer = npy = None
    try:
        if pq_path in todo:
            schema = record_batch(0, np.zeros((0, d), np.float32)).schema
            writer = pq.ParquetWriter(pq_path + '.tmp', schema)
        if npy_path in todo:
            # The .npy header first, then the raw rows appended chunk by chunk.
            npy = open(npy_path + '.tmp', 'wb')
            np.lib.format.write_array_header_1_0(npy, {'descr': '<f4', 'fortran_order': False, 'shape': (rows, d)})
        start = 0
        for x in chunks:
            if writer:
                writer.write_batch(record_batch(start, x), row_group_size=CHUNK)
            if npy:
                npy.write(np.ascontiguousarray(x, dtype='<f4').tobytes())
            start += len(x)
        assert start == rows, (start, rows)
    finally:
        if writer:
            writer.close()
        if npy:
            npy.close()
    for p in todo:
        os.replace(p + '.tmp', p)
        print(f'{p}: wrote {rows} x {d} ({os.path.getsize(p) / 2**20:.0f} MiB)')

ap = argparse.ArgumentParser()
ap.add_argument('out')
ap.add_argument('--glove', default=os.path.expanduser('~/.cache/quiver/glove50'), help='dir with base.fvecs')
ap.add_argument('--glove-limit', type=int, default=0, help='only the first N GloVe rows (smoke tests)')
ap.add_argument('--synth-rows', type=int, default=2_000_000)
ap.add_argument('--synth-dim', type=int, default=128)
ap.add_argument('--seed', type=int, default=42)
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)

base = f'{a.glove}/base.fvecs'
if os.path.exists(base):
    d = int(np.fromfile(base, dtype=np.int32, count=1)[0])
    total = os.path.getsize(base) // (4 * (d + 1))
    write(a.out, f'glove{d}', glove_chunks(base, a.glove_limit), min(a.glove_limit or total, total), d)
else:
    print(f'{base}: missing, GloVe files skipped (scripts/fetch-glove.sh fetches it)')
if a.synth_rows:
    write(a.out, f'synth{a.synth_dim}', synth_chunks(a.synth_rows, a.synth_dim, a.seed), a.synth_rows, a.synth_dim)
