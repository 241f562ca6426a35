#!/usr/bin/env python3
"""Markdown tables from scripts/bench/hosts_grid.sh's OUTDIR: predicted vs measured per cell, the
error statistics, and what `plan --hardware cpu` recommends on each cluster file.
Usage: hosts_table.py OUTDIR [ROWS] (ROWS: grid.jsonl, or hosts_reprice.py's output)"""
import glob, json, os, statistics, sys

out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, sys.argv[2] if len(sys.argv) > 2 else "grid.jsonl"))]


def fmt(v):
    return "—" if v is None else f"{v:.1f}"


print("| model | hosts | link | layout + attention | batch | test | predicted tok/s | measured tok/s | error |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    err = r.get("predicted_error")
    layout = r["note"] if r["layout"] == "none" else f"{r['layout']}+{r['attention']}"
    cut = " (cut short)" if r["note"].startswith("cut") else ""
    print(f"| {r['model']} | {r['hosts']} | {r['rate']} | {layout} | {r['batch']} | {r['test']}{cut} | {fmt(r['predict_tokens_per_s'])} | "
          f"{fmt(r['measured_tokens_per_s'])} | {'—' if err is None else f'{100 * err:+.0f}%'} |")
errors = [abs(r["predicted_error"]) for r in rows if r.get("predicted_error") is not None]
failed = [r for r in rows if r.get("measured_tokens_per_s") is None]
print()
print(f"{len(errors)} cells measured ({len(failed)} failed): median |error| {100 * statistics.median(errors):.0f}%, "
      f"{sum(e <= 0.25 for e in errors)} within 25%, max {100 * max(errors):.0f}%.")
for r in failed:
    print(f"- failed: {r['model']} {r['hosts']} hosts {r['rate']} {r['layout']}+{r['attention']} {r['test']}: {str(r.get('error'))[:200]}")
print()
print("| model | cluster file | phase | recommended | why |")
print("|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(out, "plan-*.json"))):
    plan = json.load(open(path))
    name = os.path.basename(path)[5:-5]
    for p in plan["plans"]:
        c = p["chosen"]
        what = f"{c['configuration']}: mesh {c['mesh']}, {c['ffn_layout']}+{c['attention']}, batch {c['batch']}"
        print(f"| {plan['model']} | {name} | {p['phase']} | {what} | {p['reason']} |")
