#!/usr/bin/env python3
"""Turns the JSON lines of a benchmark run into a markdown table and a recall@10-vs-QPS PNG.
Usage: plot.py RESULTS.jsonl OUT_PREFIX   (writes OUT_PREFIX.md and OUT_PREFIX.png)"""
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
out = sys.argv[2]
builds = [r for r in rows if r.get('event') == 'build']
points = [r for r in rows if 'qps' in r]
by = collections.defaultdict(list)
for r in points:
    by[r['system']].append(r)
with open(out + '.md', 'w') as f:
    f.write('| system | nprobe | refine | recall@10 | QPS (1 thread) |\n|---|---|---|---|---|\n')
    for s, rs in by.items():
        for r in sorted(rs, key=lambda r: (r['nprobe'], r.get('refine') or 0)):
            f.write(f"| {s} | {r['nprobe']} | {r.get('refine') or '-'} | {r['recall10']:.4f} | {r['qps']:.0f} |\n")
    f.write('\n| system | build seconds |\n|---|---|\n')
    for b in builds:
        f.write(f"| {b['system']} | {b['seconds']:.1f} |\n")
    # Best QPS at recall >= 0.95 per system.
    f.write('\n| system | best QPS at recall@10 ≥ 0.95 |\n|---|---|\n')
    for s, rs in by.items():
        ok = [r for r in rs if r['recall10'] >= 0.95]
        f.write(f"| {s} | {max(r['qps'] for r in ok):.0f} |\n" if ok else f"| {s} | not reached |\n")
try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s, rs in by.items():
        rs = sorted(rs, key=lambda r: r['recall10'])
        ax.plot([r['recall10'] for r in rs], [r['qps'] for r in rs], marker='o', label=s)
    ax.set_xlabel('recall@10'); ax.set_ylabel('queries/s (one thread)'); ax.set_yscale('log')
    ax.set_title('GloVe-50 (390k, cosine), one query per call'); ax.grid(True, alpha=.3); ax.legend(fontsize=8)
    fig.tight_layout(); fig.savefig(out + '.png', dpi=110)
except ImportError:
    print('matplotlib missing: no PNG', file=sys.stderr)
print(open(out + '.md').read())
