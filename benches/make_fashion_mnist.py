#!/usr/bin/env python3
"""Build the Fashion-MNIST 784-d benchmark set (the ann-benchmarks fashion-mnist-784-euclidean
split) from Debian's `dataset-fashion-mnist` package: the 60,000 training images are the base,
the 10,000 test images the queries, as float32 pixel values 0..255, with exact L2 top-100
ground truth.

Output (in --out): base.fvecs, query.fvecs, gt100.ivecs, gt100_dist.fvecs (squared L2).
Needs: apt-get install dataset-fashion-mnist; pip install numpy. Ground truth: ~1 min on 2 cores.
"""
import argparse, gzip, os, sys, time
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_glove50 import write_vecs  # noqa: E402  (the fvecs writer of the GloVe set)

SRC = '/usr/share/datasets/fashion-mnist'


def images(name):
    with gzip.open(os.path.join(SRC, name)) as f:
        raw = f.read()
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype='>i4')
    assert magic == 2051, magic
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(n, rows * cols).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', required=True)
    a = ap.parse_args()
    xb, xq = images('train-images-idx3-ubyte.gz'), images('t10k-images-idx3-ubyte.gz')
    assert xb.shape == (60000, 784) and xq.shape == (10000, 784), (xb.shape, xq.shape)
    os.makedirs(a.out, exist_ok=True)
    t = time.time()
    nb = (xb.astype(np.float64) ** 2).sum(1)
    I = np.empty((len(xq), 100), dtype=np.int32); D = np.empty((len(xq), 100), dtype=np.float32)
    for s in range(0, len(xq), 500):
        q = xq[s:s + 500].astype(np.float64)
        d2 = (q ** 2).sum(1)[:, None] - 2 * q @ xb.T.astype(np.float64) + nb[None, :]
        top = np.argpartition(d2, 100, axis=1)[:, :100]
        td = np.take_along_axis(d2, top, 1)
        order = np.argsort(td, axis=1, kind='stable')
        I[s:s + 500] = np.take_along_axis(top, order, 1); D[s:s + 500] = np.take_along_axis(td, order, 1)
    write_vecs(f'{a.out}/base.fvecs', xb, np.float32); write_vecs(f'{a.out}/query.fvecs', xq, np.float32)
    write_vecs(f'{a.out}/gt100.ivecs', I, np.int32); write_vecs(f'{a.out}/gt100_dist.fvecs', D, np.float32)
    print(f'wrote {a.out}: base {xb.shape}, query {xq.shape}, ground truth in {time.time() - t:.0f}s')


if __name__ == '__main__':
    main()
