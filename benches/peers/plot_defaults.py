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
        elif r.get('system', '').startswith('faiss'):
            out.write(json.dumps(r) + '\n')
here = os.path.dirname(os.path.abspath(__file__))
subprocess.run([sys.executable, os.path.join(here, 'plot.py'), out.name, sys.argv[2], sys.argv[3]], check=True)
os.unlink(out.name)
