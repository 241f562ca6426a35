#!/usr/bin/env python3
"""Markdown from scripts/bench/hosts_grid.sh's OUTDIR: predicted / measured tokens/s per cell (one
row per model, hosts, link and attention layout; a column per feed-forward layout), the error
statistics, and what `plan --hardware cpu` recommends on each cluster file.
Usage: hosts_table.py OUTDIR [ROWS] (ROWS: grid.jsonl, or hosts_reprice.py's output)"""
import glob, json, os, statistics, sys

out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, sys.argv[2] if len(sys.argv) > 2 else "grid.jsonl"))]


def slow(r):
    """Measured while the machine ran below 85% of its fastest canary (hosts_grid.sh), before or after."""
    return min(r.get("canary_before", 1), r.get("canary_after", 1)) < 0.85


def cell(r):
    if not r or r.get("measured_tokens_per_s") is None:
        return "—" if not r else f"failed: {str(r.get('error'))[:60]}"
    cut = "*" if r["note"].startswith("cut") else ""
    cut += "†" if slow(r) else ""
    digits = 0 if r["predict_tokens_per_s"] >= 10 else 2
    return (f"{r['predict_tokens_per_s']:.{digits}f} / {r['measured_tokens_per_s']:.{digits}f}{cut} "
            f"({100 * r['predicted_error']:+.0f}%)")


index = {(r["model"], r["hosts"], r["rate"], r["layout"], r["attention"], r["test"][:2]): r for r in rows}
models = list(dict.fromkeys(r["model"] for r in rows))
print("| model | hosts | link | attention (batch) | test | ws1d | ws2d | wg-xyz |")
print("|---|---|---|---|---|---|---|---|")
for m in models:
    for t in ["pp", "tg"]:
        base = [r for r in rows if r["model"] == m and r["layout"] == "none" and r["test"].startswith(t)]
        if base:
            print(f"| {m} | 1 | — | no partitioning | {base[0]['test']} | " + " | ".join(f"{r['note']}: {cell(r)}" for r in base) + " |" * (4 - len(base)))
    for h in sorted({r["hosts"] for r in rows if r["hosts"] > 1}):
        for rate in list(dict.fromkeys(r["rate"] for r in rows if r["hosts"] == h)):
            for attention in ["heads", "batch"]:
                for t in ["pp", "tg"]:
                    cells = [index.get((m, h, rate, layout, attention, t)) for layout in ["ws1d", "ws2d", "wg-xyz"]]
                    if any(cells):
                        batch = next(c["batch"] for c in cells if c)
                        print(f"| {m} | {h} | {rate} | {attention} ({batch}) | {t}{128 if t == 'pp' else 32} | "
                              + " | ".join(cell(c) for c in cells) + " |")
errors = [abs(r["predicted_error"]) for r in rows if r.get("predicted_error") is not None]
failed = [r for r in rows if r.get("measured_tokens_per_s") is None]
print()
print(f"Predicted / measured tokens/s (error). {len(errors)} cells measured ({len(failed)} failed): median |error| "
      f"{100 * statistics.median(errors):.0f}%, {sum(e <= 0.25 for e in errors)} within 25%, max {100 * max(errors):.0f}%. "
      "* = predicted to take over the budget per run: measured once, decode with the steps that fit in it.")
steady = [abs(r["predicted_error"]) for r in rows if r.get("predicted_error") is not None and not slow(r)]
if any("canary_before" in r for r in rows) and steady:
    print(f"† = measured while the machine ran slow (a canary before or after the cell below 85% of the fastest). "
          f"The other {len(steady)} cells: median |error| {100 * statistics.median(steady):.0f}%, "
          f"{sum(e <= 0.25 for e in steady)} within 25%, max {100 * max(steady):.0f}%.")
print()
print("| model | cluster file | phase | recommended | predicted tok/s | the machine as one process |")
print("|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(out, "plan-*.json"))):
    plan = json.load(open(path))
    for p in plan["plans"]:
        c, whole = p["chosen"], p.get("machine_as_one_process")
        aside = "—" if not whole else f"{whole['tokens_per_s']:.1f}"
        print(f"| {plan['model']} | {os.path.basename(path)[5:-5]} | {p['phase']} | {c['configuration']}: mesh {c['mesh']}, "
              f"{c['ffn_layout']}+{c['attention']}, batch {c['batch']} | {c['tokens_per_s']:.1f} | {aside} |")
