#!/usr/bin/env python3
"""The defaults run (run_defaults.sh) as plot.py's input: each Quiver sweep point becomes two
curves' points, one request at a time and SearchBatch(100); FAISS lines pass through. Then
plot.py writes OUT_PREFIX.md and OUT_PREFIX.png.
Usage: plot_defaults.py RESULTS.jsonl OUT_PREFIX TITLE"""
import json, os, subprocess, sys, tempfile

rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
with tempfile.NamedTemporaryFile('w', suffix='.jsonl', delete=False) as out:
    for r in rows:
        if 'qps_batch' in r and 'qps' in r:
            out.write(json.dumps(r) + '\n')
            b = dict(r, system=r['system'] + '-batch100', qps=r['qps_batch'], recall10=r['recall10_batch'])
            out.write(json.dumps(b) + '\n')
        elif r.get('system', '').startswith(('faiss', 'quiver-inprocess')) and 'qps' in r:
            out.write(json.dumps(r) + '\n')
here = os.path.dirname(os.path.abspath(__file__))
subprocess.run([sys.executable, os.path.join(here, 'plot.py'), out.name, sys.argv[2], sys.argv[3]], check=True)
os.unlink(out.name)
# Concurrent clients (glove-bench --clients) next to the in-process search on 1 and 2 threads.
clients = [r for r in rows if r.get('event') == 'clients']
if clients:
    inproc = {r['threads']: r['qps'] for r in rows
              if r.get('system', '').startswith('quiver-inprocess') and r.get('target_recall') and
              abs(r['target_recall'] - 0.95) < 1e-3}
    with open(sys.argv[2] + '.md', 'a') as md:
        md.write('\n| system | concurrent clients | recall@10 | QPS | × in-process, 2 threads |\n|---|---|---|---|---|\n')
        for r in clients:
            ratio = f"{r['qps'] / inproc[2]:.2f}×" if 2 in inproc else ''
            md.write(f"| {r['system']} | {r['clients']} | {r['recall10']:.4f} | {r['qps']:.0f} | {ratio} |\n")
        for t, q in sorted(inproc.items()):
            md.write(f"| quiver-inprocess (target_recall 0.95) | {t} thread(s) | | {q:.0f} | |\n")
