#!/usr/bin/env python3
"""Prices every cell of a hosts_grid.sh run again with BIN's `predict` and the run's own
cluster files (the measurements stay as measured): for a cost-model change after the grid.
Writes OUTDIR/grid.jsonl's rows with the new prediction to stdout.
Usage: hosts_reprice.py OUTDIR BIN > OUTDIR/grid-repriced.jsonl"""
import json, os, subprocess, sys

out, binary = sys.argv[1], sys.argv[2]
files = {"smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma3-270m": "gemma-3-270m-q4_k_m.gguf"}
for line in open(os.path.join(out, "grid.jsonl")):
    r = json.loads(line)
    model = "gguf:" + os.path.expanduser("~/.cache/meshinfer/" + files[r["model"]])
    test, tokens = r["test"][:2], int(r["test"][2:])
    args = [binary, "predict", "--hardware", "cpu", "--model", model, "--phase", "prefill" if test == "pp" else "decode",
            "--batch", str(r["batch"]), "--input-tokens", "128" if test == "pp" else "1", "--generate-tokens", "32",
            "--context", "0", "--weights", "native", "--json"]
    if r["layout"] == "none":   # no partitioning: one host of the cluster, or the machine as one process
        args += ["--chips", "1", "--ffn-layout", "ws1d", "--attention", "heads"]
        if r["note"].startswith("one host"):
            args += ["--transport", "mpi", "--calibration", os.path.join(out, "cal-2hosts-unshaped.json")]
    else:
        args += ["--chips", str(r["hosts"]), "--topology", "2x2x1" if r["hosts"] == 4 else "2x1x1", "--ffn-layout", r["layout"],
                 "--attention", r["attention"], "--transport", "mpi",
                 "--calibration", os.path.join(out, f"cal-{r['hosts']}hosts-{r['rate']}.json")]
    p = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    per_run = p["latency_s"] * (1 if test == "pp" else tokens / 32)
    r["predict_tokens_per_s"] = r["batch"] * tokens / per_run
    if r.get("measured_tokens_per_s"):
        r["predicted_error"] = r["predict_tokens_per_s"] / r["measured_tokens_per_s"] - 1
    print(json.dumps(r))
