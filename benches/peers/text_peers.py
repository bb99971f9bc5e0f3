#!/usr/bin/env python3
"""Full-text search peers on the chunks of benches/text/make_chunks.py, one query at a time on
one core, as Quiver's text-bench measures itself:

* LanceDB's native full-text index (lance FTS: BM25, block-max WAND) with its defaults, which
  analyze like Quiver's `text:english+stop`: lower-case, ASCII folding, English stemming, stop
  words removed;
* PostgreSQL 18 full-text search: a stored `tsvector` (config `english`: stemming and stop
  words) with a GIN index, ranked by `ts_rank`. With OR semantics (`w1 | w2 | ...`, what BM25
  does) and with `plainto_tsquery`'s AND semantics (what most applications write; it matches
  fewer rows, so it is cheaper and not the same question).

Prints one JSON line per system: build seconds, QPS, p50/p99 ms, mean hits.
Usage: text_peers.py DIR [--chunks N] [--queries N] [--rounds 3] [--only lancedb,pg-or,pg-and]"""
import argparse, json, os, shutil, signal, statistics, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

ap = argparse.ArgumentParser()
ap.add_argument('dir'); ap.add_argument('--chunks', type=int, default=0)
ap.add_argument('--queries', type=int, default=0); ap.add_argument('--rounds', type=int, default=3)
ap.add_argument('--k', type=int, default=10)
ap.add_argument('--only', default='lancedb,pg-or,pg-and')
a = ap.parse_args()
only = set(a.only.split(','))


def lines(name, limit):
    out = []
    with open(os.path.join(a.dir, name)) as f:
        for line in f:
            out.append(json.loads(line))
            if limit and len(out) >= limit:
                break
    return out


chunks = lines('chunks.jsonl', a.chunks)
queries = [q['text'] for q in lines('queries.jsonl', a.queries)]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def measure(system, search, extra):
    hits = sum(len(search(q)) for q in queries)  # warm-up
    rounds = []
    for _ in range(a.rounds):
        lat = []
        t0 = time.perf_counter()
        for q in queries:
            t = time.perf_counter(); search(q); lat.append((time.perf_counter() - t) * 1e3)
        total = time.perf_counter() - t0
        lat.sort()
        rounds.append((len(queries) / total, lat[len(lat) // 2], lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]))
    rounds.sort()
    qps, p50, p99 = rounds[len(rounds) // 2]
    print(json.dumps({'event': 'search', 'system': system, 'chunks': len(chunks), 'queries': len(queries),
                      'k': a.k, 'qps': qps, 'p50_ms': p50, 'p99_ms': p99, 'rounds': a.rounds,
                      'mean_hits': hits / max(1, len(queries)), **extra}), flush=True)


if 'lancedb' in only:
    import lancedb, pyarrow as pa
    common.pin_to_one_core()
    d = tempfile.mkdtemp(prefix='lancedb-fts-')
    try:
        db = lancedb.connect(d)
        t = time.perf_counter()
        tbl = db.create_table('t', pa.table({'id': pa.array([c['id'] for c in chunks], pa.int64()),
                                            'text': pa.array([c['text'] for c in chunks], pa.string())}))
        load = time.perf_counter() - t
        t = time.perf_counter()
        tbl.create_fts_index('text')  # defaults: English stemming, stop words, folding, lower case
        index = time.perf_counter() - t
        print(json.dumps({'event': 'build', 'system': 'lancedb-fts', 'load_seconds': load, 'index_seconds': index,
                          'lancedb': lancedb.__version__, 'bytes': common.dir_bytes(d)}), flush=True)
        search = lambda q: tbl.search(q, query_type='fts').limit(a.k).select(['id', '_score']).to_arrow()['id'].to_pylist()
        measure('lancedb-fts', search, {'lancedb': lancedb.__version__})
    finally:
        shutil.rmtree(d, ignore_errors=True)

if only & {'pg-or', 'pg-and'}:
    import psycopg
    base = tempfile.mkdtemp(prefix='pg-fts-')
    opts = ('-c shared_buffers=2GB -c maintenance_work_mem=1GB -c max_parallel_maintenance_workers=1 '
            '-c max_parallel_workers_per_gather=0 -c jit=off')
    try:
        with common.postgres(base, opts) as (port, pgdata):
            conn = psycopg.connect(host='127.0.0.1', port=port, user='postgres', dbname='postgres', autocommit=True)
            t = time.perf_counter()
            conn.execute('CREATE TABLE t (id bigint, body text, tsv tsvector)')
            with conn.cursor().copy('COPY t (id, body) FROM STDIN') as copy:
                for c in chunks:
                    copy.write_row((c['id'], c['text']))
            conn.execute("UPDATE t SET tsv = to_tsvector('english', body)")
            load = time.perf_counter() - t
            t = time.perf_counter()
            conn.execute('CREATE INDEX t_tsv ON t USING gin (tsv)')
            conn.execute('VACUUM ANALYZE t')
            index = time.perf_counter() - t
            size = conn.execute("SELECT pg_total_relation_size('t')").fetchone()[0]
            version = conn.execute('SHOW server_version').fetchone()[0]
            print(json.dumps({'event': 'build', 'system': 'postgres-fts', 'load_seconds': load,
                              'index_seconds': index, 'postgres': version, 'bytes': size}), flush=True)
            cur = conn.cursor()
            sql = {
                # The query's lexemes OR-ed: every row holding any of them is ranked, as in BM25.
                'pg-or': "SELECT id FROM t, (SELECT NULLIF(replace(plainto_tsquery('english', %s)::text, '&', '|'), '')::tsquery AS q) s "
                         "WHERE tsv @@ q ORDER BY ts_rank(tsv, q) DESC LIMIT %s",
                'pg-and': "SELECT id FROM t, plainto_tsquery('english', %s) q WHERE tsv @@ q ORDER BY ts_rank(tsv, q) DESC LIMIT %s",
            }
            for name in ('pg-or', 'pg-and'):
                if name in only:
                    search = lambda q, s=sql[name]: cur.execute(s, (q, a.k)).fetchall()
                    measure(f'postgres-fts-{name[3:]}', search, {'postgres': version})
    finally:
        shutil.rmtree(base, ignore_errors=True)
