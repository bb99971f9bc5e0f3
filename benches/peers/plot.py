#!/usr/bin/env python3
"""Turns the JSON lines of a benchmark run into a markdown report and a recall@10-vs-QPS PNG.
Usage: plot.py RESULTS.jsonl OUT_PREFIX [TITLE]   (writes OUT_PREFIX.md and OUT_PREFIX.png)"""
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
out = sys.argv[2]
title = sys.argv[3] if len(sys.argv) > 3 else 'GloVe-50 (390k, cosine), one query per call'
builds = [r for r in rows if r.get('event') == 'build']
points = [r for r in rows if 'qps' in r and r.get('target_recall') is None]
targets = [r for r in rows if 'qps' in r and r.get('target_recall') is not None]
by = collections.defaultdict(list)
for r in points:
    by[r['system']].append(r)

def setting(r):
    if r.get('ef') is not None:
        return f"ef {r['ef']}"
    return f"nprobe {r['nprobe']}" + (f", refine {r['refine']}" if r.get('refine') else '')

def mb(x):
    return f'{x / 1e6:.1f}' if x else '-'

def best(rs):
    ok = [r for r in rs if r['recall10'] >= 0.95]
    return max(ok, key=lambda r: r['qps']) if ok else None

with open(out + '.md', 'w') as f:
    f.write('| system | setting | recall@10 | QPS (1 thread) |\n|---|---|---|---|\n')
    for s, rs in by.items():
        for r in sorted(rs, key=lambda r: r['recall10']):
            f.write(f"| {s} | {setting(r)} | {r['recall10']:.4f} | {r['qps']:.0f} |\n")
    f.write('\n| system | build seconds | index MB |\n|---|---|---|\n')
    for b in builds:
        f.write(f"| {b['system']} | {b['seconds']:.1f} | {mb(b.get('index_bytes'))} |\n")
    peers = {s: best(rs) for s, rs in by.items() if not s.startswith('quiver')}
    peers = {s: r for s, r in peers.items() if r}
    top = max(peers.items(), key=lambda kv: kv[1]['qps']) if peers else None
    f.write('\n| system | best QPS at recall@10 ≥ 0.95 | setting (recall) | × best peer |\n|---|---|---|---|\n')
    for s, rs in by.items():
        r = best(rs)
        if not r:
            f.write(f'| {s} | not reached | | |\n')
            continue
        ratio = f"{r['qps'] / top[1]['qps']:.2f}× {top[0]}" if top else '-'
        f.write(f"| {s} | {r['qps']:.0f} | {setting(r)} ({r['recall10']:.3f}) | {ratio} |\n")
    if targets:
        f.write('\n| system | target recall | recall@10 reached | QPS |\n|---|---|---|---|\n')
        for r in targets:
            f.write(f"| {r['system']} | {r['target_recall']:.2f} | {r['recall10']:.4f} | {r['qps']:.0f} |\n")
try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for s, rs in by.items():
        # The Pareto frontier (as ann-benchmarks draws it): a setting is kept if no setting of
        # the same system has both higher recall and higher QPS.
        rs = sorted(rs, key=lambda r: -r['recall10'])
        front, best_qps = [], 0.0
        for r in rs:
            if r['qps'] > best_qps:
                front.append(r); best_qps = r['qps']
        ax.plot([r['recall10'] for r in front], [r['qps'] for r in front], marker='o', ms=3, label=s)
    ax.axvline(0.95, color='grey', lw=.8, ls='--')
    ax.set_xlabel('recall@10'); ax.set_ylabel('queries/s (one thread)'); ax.set_yscale('log')
    ax.set_title(title); ax.grid(True, alpha=.3); ax.legend(fontsize=7)
    fig.tight_layout(); fig.savefig(out + '.png', dpi=110)
except ImportError:
    print('matplotlib missing: no PNG', file=sys.stderr)
print(open(out + '.md').read())
