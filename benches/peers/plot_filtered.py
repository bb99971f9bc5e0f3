#!/usr/bin/env python3
"""Filtered-search report: per filter, each system's best QPS at recall@10 >= 0.95 (and the
setting), against Quiver's own unfiltered figure; plus a PNG of recall vs QPS per filter.
Usage: plot_filtered.py RESULTS.jsonl OUT_PREFIX"""
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
out = sys.argv[2]
builds = [r for r in rows if r.get('event') == 'build']
points = [r for r in rows if 'qps' in r and 'filter' in r]
FILTERS = ['none', '0.1%', '1%', '10%', '50%']

def setting(r):
    keys = [k for k in ('nprobe', 'refine', 'ef', 'ef_search') if r.get(k) is not None]
    return ', '.join(f'{k} {r[k]}' for k in keys) or '-'

def best(rs):
    ok = [r for r in rs if r['recall10'] >= 0.95]
    return max(ok, key=lambda r: r['qps']) if ok else None

by = collections.defaultdict(list)
for r in points:
    by[(r['system'], r['filter'])].append(r)
systems = list(dict.fromkeys(r['system'] for r in points))
quiver_none = best(by.get(('quiver-ivfpq4', 'none'), []))
with open(out + '.md', 'w') as f:
    f.write('Best QPS (one thread) at recall@10 ≥ 0.95 per filter; in brackets the setting and recall; '
            '"max recall" when no setting reached 0.95.\n\n')
    f.write('| system | ' + ' | '.join(FILTERS) + ' |\n|---|' + '---|' * len(FILTERS) + '\n')
    for s in systems:
        cells = []
        for flt in FILTERS:
            rs = by.get((s, flt), [])
            b = best(rs)
            if b:
                cells.append(f"{b['qps']:.0f} ({setting(b)}: {b['recall10']:.3f})")
            elif rs:
                m = max(rs, key=lambda r: r['recall10'])
                cells.append(f"max recall {m['recall10']:.3f} ({setting(m)}, {m['qps']:.0f} QPS)")
            else:
                cells.append('-')
        f.write(f'| {s} | ' + ' | '.join(cells) + ' |\n')
    if quiver_none:
        f.write(f"\nQuiver unfiltered best at recall ≥ 0.95: {quiver_none['qps']:.0f} QPS ({setting(quiver_none)}).\n\n")
        f.write('| Quiver filtered / Quiver unfiltered | ' + ' | '.join(FILTERS[1:]) + ' |\n|---|' + '---|' * 4 + '\n')
        cells = []
        for flt in FILTERS[1:]:
            b = best(by.get(('quiver-ivfpq4', flt), []))
            cells.append(f"{b['qps'] / quiver_none['qps']:.2f}×" if b else 'n/a')
        f.write('| ratio | ' + ' | '.join(cells) + ' |\n')
    f.write('\n| system | build seconds | index MB |\n|---|---|---|\n')
    for b in builds:
        ib = b.get('index_bytes')
        f.write(f"| {b['system']} | {b['seconds']:.1f} | {ib / 1e6:.1f} |\n" if ib else f"| {b['system']} | {b['seconds']:.1f} | - |\n")
try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.5), sharey=True)
    for ax, flt in zip(axes, FILTERS[1:]):
        for s in systems:
            rs = sorted(by.get((s, flt), []), key=lambda r: r['recall10'])
            if rs:
                ax.plot([r['recall10'] for r in rs], [r['qps'] for r in rs], marker='o', ms=3, label=s)
        ax.axvline(0.95, color='grey', lw=.8, ls='--'); ax.set_yscale('log'); ax.grid(True, alpha=.3)
        ax.set_title(f'filter {flt}'); ax.set_xlabel('recall@10')
    axes[0].set_ylabel('queries/s (one thread)'); axes[-1].legend(fontsize=7)
    fig.suptitle('GloVe-50 (390k, cosine), filtered search, one query per call')
    fig.tight_layout(); fig.savefig(out + '.png', dpi=100)
except ImportError:
    print('matplotlib missing: no PNG', file=sys.stderr)
print(open(out + '.md').read())
