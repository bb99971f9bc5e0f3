#!/usr/bin/env python3
"""LanceDB's hybrid search (native full-text index + vector search, fused by its RRFReranker)
on exactly the chunks and vectors of a Quiver document collection, with the same questions.

Inputs: CHUNKS.jsonl from `quiver export --collection C --output CHUNKS.jsonl` (each chunk's id,
stored MiniLM vector and payload: text, context header, document_id), QUERY.fvecs (the questions
embedded by the same model, `embed-corpus --questions`), and QUESTIONS.jsonl (question,
expected_documents). LanceDB indexes the context header and the chunk text as one column (Quiver
indexes them as two text fields searched together) with its default analyzer (English stemming,
stop words, folding), and scans the vectors exactly (the set is small; Quiver's in-memory segment
is scanned exactly too).

Prints recall@K and MRR of documents (the unique documents of the top K chunks, in order, as
`quiver eval` counts them) for vector, FTS and hybrid, and the hybrid p50 latency.
Usage: lancedb_hybrid.py CHUNKS.jsonl QUERY.fvecs QUESTIONS.jsonl [--k 5]"""
import argparse, json, os, shutil, statistics, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import lancedb, numpy as np, pyarrow as pa
from lancedb.rerankers import RRFReranker

ap = argparse.ArgumentParser()
ap.add_argument('chunks'); ap.add_argument('queries'); ap.add_argument('questions')
ap.add_argument('--k', type=int, default=5)
a = ap.parse_args()
ids, docs, texts, vecs = [], [], [], []
with open(a.chunks) as f:
    for line in f:
        r = json.loads(line)
        p = r['payload'] if isinstance(r['payload'], dict) else json.loads(r['payload'])
        ids.append(str(r['id'])); docs.append(p['document_id'])
        texts.append(f"{p.get('context', '')}\n{p['text']}"); vecs.append(r['vector'])
xq = common.fvecs(a.queries)
qs = [json.loads(l) for l in open(a.questions) if l.strip()]
assert len(qs) == len(xq), (len(qs), len(xq))
d = tempfile.mkdtemp(prefix='lancedb-hybrid-')
try:
    db = lancedb.connect(d)
    dim = len(vecs[0])
    tbl = db.create_table('t', pa.table({
        'id': pa.array(ids), 'document_id': pa.array(docs), 'text': pa.array(texts),
        'vector': pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(vecs, dtype=np.float32).ravel()), dim)}))
    tbl.create_fts_index('text')
    common.pin_to_one_core()

    def score(rows_per_q):
        recall, rr = [], []
        for q, rows in zip(qs, rows_per_q):
            seen = []
            for dd in rows:
                if dd not in seen:
                    seen.append(dd)
            exp = q['expected_documents']
            recall.append(sum(e in seen for e in exp) / len(exp))
            rr.append(next((1 / (i + 1) for i, dd in enumerate(seen) if dd in exp), 0.0))
        return statistics.mean(recall), statistics.mean(rr)

    runs = {
        'vector': lambda i: tbl.search(xq[i].tolist()).distance_type('cosine').limit(a.k),
        'fts': lambda i: tbl.search(qs[i]['question'], query_type='fts').limit(a.k),
        'hybrid': lambda i: tbl.search(query_type='hybrid').vector(xq[i].tolist()).text(qs[i]['question'])
                             .rerank(RRFReranker()).limit(a.k),
    }
    for name, q in runs.items():
        rows, lat = [], []
        for i in range(len(qs)):
            t = time.perf_counter()
            res = q(i).select(['document_id']).to_arrow()['document_id'].to_pylist()
            lat.append((time.perf_counter() - t) * 1e3)
            rows.append(res)
        recall, mrr = score(rows)
        print(json.dumps({'system': f'lancedb-{name}', 'questions': len(qs), 'k': a.k, 'recall_at_k': recall,
                          'mrr': mrr, 'p50_ms': statistics.median(lat), 'lancedb': lancedb.__version__}), flush=True)
finally:
    shutil.rmtree(d, ignore_errors=True)
