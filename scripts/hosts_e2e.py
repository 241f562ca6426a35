#!/usr/bin/env python3
"""MeshInfer across namespace hosts over TCP (issue 14), end to end.

Makes hosts with scripts/hosts.sh and checks: `up`/`down` (addresses, no default route, shaping
on both sides of a link, refusing a routed /24, nothing left when `up` fails, `down` twice);
`generate` across 2 hosts (meshes 2) and 4 hosts (meshes 4 and 2x2) giving the in-process
mesh's greedy tokens and `collective_bytes`, with the bytes seen on the veth links; `calibrate
--transport mpi` recording the cluster; `bench` across 4 hosts priced with that file; a
streamed chat request to `serve` on host 1 (reached from this namespace), across 2 hosts and
across 4 (mesh 2x2), equal to in-process `serve`; and the faults: a link cut and a rank killed mid-generation end the job non-zero
within --collective-timeout + 10 s with no meshinfer or orted left in any host, and the same
for `serve` (whose /health never hangs meanwhile).

Needs root. Without it, or when namespaces cannot be made, it skips with the reason — unless
CI=true, where that is a failure. Usage: hosts_e2e.py MESHINFER_BINARY
"""
import json, os, subprocess, sys, tempfile, threading, time, urllib.error, urllib.request

import openai

BIN = os.path.abspath(sys.argv[1])
HOSTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hosts.sh")
TIMEOUT = 5          # --collective-timeout for every run here
PROMPTS = ["--prompt", "The capital of France is", "--prompt", "Once upon a time"]


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    print(f"ok: {what}", flush=True)


def sh(*args, ok=True, timeout=300):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if ok and r.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}")
    return r


def hosts(*args, ok=True):
    return sh(HOSTS, *args, ok=ok)


def leftovers():
    """meshinfer or orted processes in any namespace host (`hosts.sh pids`)."""
    out = hosts("pids", ok=False).stdout
    return [l for l in out.splitlines() if "meshinfer" in l or "orted" in l]


def wait_clean(seconds):
    deadline = time.time() + seconds
    while time.time() < deadline and leftovers():
        time.sleep(0.2)
    return leftovers()


def link_bytes(n):
    """Bytes through each host's link (both directions), from `ip -s link`'s counters."""
    total = []
    for i in range(1, n + 1):
        out = sh("ip", "-s", "-j", "link", "show", f"mi-h{i}").stdout
        stats = json.loads(out)[0]["stats64"]
        total.append(stats["rx"]["bytes"] + stats["tx"]["bytes"])
    return total


def generate(extra, launcher=()):
    r = sh(*launcher, BIN, "generate", "--weights", "f32", "--temperature", "0", "--max-tokens", "12", "--json",
           "--collective-timeout", str(TIMEOUT), *PROMPTS, *extra, timeout=300)
    rows = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    return [(row["text"], row.get("tokens"), row["collective_bytes"]) for row in rows]


def preflight():
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (network namespaces, veth links, tc)"
    else:
        hosts("down", ok=False)
        r = hosts("up", "1", ok=False)
        if r.returncode != 0:
            reason = f"cannot make network namespaces here: {r.stderr.strip()[-300:]}"
        hosts("down", ok=False)
    if reason:
        if os.environ.get("CI") == "true":
            raise SystemExit(f"FAIL: hosts tests cannot run in CI: {reason}")
        print(f"SKIP: hosts tests: {reason}")
        sys.exit(0)


def cluster_script():
    hosts("down")
    hosts("down")   # idempotent
    up = hosts("up", "2", "--rate", "1gbit")
    check("2 hosts up" in up.stdout, "hosts.sh up 2 --rate 1gbit")
    names = sh("ip", "netns", "list").stdout
    check("mi-host1" in names and "mi-host2" in names and "mi-head" in names, "namespaces mi-host1, mi-host2 and the head mi-head")
    route = sh("ip", "netns", "exec", "mi-host1", "ip", "route").stdout
    check("10.77.0.0/24" in route and "default" not in route, f"host 1 has the /24 and no default route ({route.strip()})")
    inside = sh("ip", "netns", "exec", "mi-host1", "tc", "qdisc", "show", "dev", "eth0").stdout
    outside = sh("tc", "qdisc", "show", "dev", "mi-h1").stdout
    check("tbf" in inside and "1Gbit" in inside and "tbf" in outside and "1Gbit" in outside,
          "--rate shapes both directions of a host's link (tbf on eth0 and on the bridge port)")
    again = hosts("up", "2", ok=False)
    check(again.returncode != 0 and "already up" in again.stderr, "up refuses while a cluster is up")
    hosts("down")
    check("mi-host" not in sh("ip", "netns", "list").stdout and "mi-br" not in sh("ip", "link").stdout, "down removes every namespace and link")
    # A /24 routed on this machine is refused.
    sh("ip", "link", "add", "mi-tdummy", "type", "veth", "peer", "name", "mi-tdummy1")
    try:
        sh("ip", "addr", "add", "10.78.0.1/24", "dev", "mi-tdummy")
        sh("ip", "link", "set", "mi-tdummy", "up")
        r = hosts("up", "2", "--subnet", "10.78.0.0/24", ok=False)
        check(r.returncode != 0 and "already routed" in r.stderr, "up refuses a /24 already routed here")
    finally:
        sh("ip", "link", "del", "mi-tdummy", ok=False)
    # A failure half-way leaves nothing behind (the name of host 2's link is taken).
    sh("ip", "link", "add", "mi-h2", "type", "veth", "peer", "name", "mi-h2peer")
    r = hosts("up", "3", ok=False)
    links = sh("ip", "link").stdout
    check(r.returncode != 0 and "mi-host" not in sh("ip", "netns", "list").stdout and "mi-br" not in links and "mi-h1" not in links,
          "up that fails half-way removes what it made")
    sh("ip", "link", "del", "mi-h2", ok=False)
    hosts("down")


def equal_runs():
    layouts = ["--prefill-layout", "ws2d", "--decode-layout", "ws1d", "--attention", "heads"]
    hosts("up", "2", "--rate", "10gbit")
    before = link_bytes(2)
    over_tcp = generate(["--transport", "mpi", "--mesh", "2", "--threads", "1", *layouts], launcher=(HOSTS, "mpirun"))
    crossed = [a - b for a, b in zip(link_bytes(2), before)]
    local = generate(["--mesh", "2", "--threads", "2", *layouts])
    check(over_tcp == local, "2 hosts over TCP: greedy f32 tokens and collective_bytes equal the in-process mesh 2")
    sent = sum(sum(d["sent"].values()) for d in over_tcp[0][2])
    check(min(crossed) >= sent / 2, f"the collectives crossed the veth links ({crossed} bytes on the links, {sent} sent by the devices)")
    hosts("down")
    hosts("up", "4")
    for mesh in ["4", "2x2"]:
        for attention in ["heads", "batch"]:
            extra = ["--mesh", mesh, "--attention", attention, "--prefill-layout", "ws2d", "--decode-layout", "ws2d"]
            over_tcp = generate(["--transport", "mpi", "--threads", "1", *extra], launcher=(HOSTS, "mpirun"))
            check(over_tcp == generate(["--threads", "2", *extra]),
                  f"4 hosts over TCP, mesh {mesh}, attention over {attention}: equal to the in-process mesh")
    with tempfile.TemporaryDirectory() as tmp:
        cal = os.path.join(tmp, "cluster.json")
        base = os.environ.get("MESHINFER_CALIBRATION") or os.path.expanduser("~/.cache/meshinfer/cpu-calibration.json")
        if not os.path.exists(base):
            sh(BIN, "calibrate", "--output", cal, timeout=600)
        else:
            sh("cp", base, cal)
        out = sh(HOSTS, "mpirun", BIN, "calibrate", "--transport", "mpi", "--threads", "1", "--output", cal, timeout=600).stdout
        written = json.load(open(cal))
        cluster = written.get("mpiCluster")
        check(cluster == {"ranks": 4, "hosts": 4, "machines": 1, "threadsPerRank": 1},
              f"calibrate --transport mpi across 4 hosts records 4 hosts on 1 machine ({cluster}; {out.strip()[-160:]})")
        rates = written.get("mpiCollectiveRates", {})
        sizes = {k: [s["bytes"] for s in r.get("samples", [])] for k, r in rates.items()}
        check(len(rates) == 4 and all(len(v) == 8 and v == sorted(v) and v[-1] >= 2 << 20 and all(s["seconds"] > 0 for s in r["samples"])
                                      for r, v in ((rates[k], sizes[k]) for k in rates))
              and len(rates["all_gather"].get("backToBackSamples", [])) == 6,
              f"it keeps every measured call: 8 sizes per collective kind, all-gathers also back to back ({sizes})")
        r = sh(HOSTS, "mpirun", BIN, "bench", "--transport", "mpi", "--mesh", "2x2", "--threads", "1", "--weights", "native",
               "-p", "16", "-n", "4", "-r", "1", "--calibration", cal, "--json")
        rows = json.loads(r.stdout.strip().splitlines()[-1])["results"]
        check(len(rows) == 2 and all(row["tokens_per_s_median"] > 0 and row.get("predicted_tokens_per_s", 0) > 0 for row in rows),
              "bench across 4 hosts measures pp and tg, priced with --calibration FILE")
        plan = json.loads(sh(BIN, "plan", "--hardware", "cpu", "--calibration", cal, "--model", "smollm2-135m", "--json").stdout)
        check({p["phase"] for p in plan["plans"]} == {"prefill", "decode"} and all(p["reason"] for p in plan["plans"])
              and plan["cluster"]["hosts"] == 4 and {c["hosts"] for p in plan["plans"] for c in p["best_per_configuration"]} >= {1, 2, 4},
              "plan --hardware cpu --calibration FILE weighs 1, 2 and 4 hosts and says why")
    hosts("down")


def start_serve(flags, launcher=(), host="127.0.0.1", port=18080):
    p = subprocess.Popen([*launcher, BIN, "serve", "--port", str(port), *flags], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return p
        except Exception:
            if p.poll() is not None:
                raise SystemExit(f"FAIL: serve exited early: {p.stderr.read()[-2000:]}")
            time.sleep(0.3)
    p.kill()
    raise SystemExit("FAIL: serve did not become healthy within 120 s")


def chat(host, port):
    client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="none", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name three colours."}],
                                            max_tokens=16, temperature=0, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def local_chat(layouts):
    """The streamed chat against in-process serve with the same mesh and layouts."""
    p = start_serve([*layouts, "--threads", "2"])
    try:
        return chat("127.0.0.1", 18080)
    finally:
        p.terminate()
        p.wait(timeout=30)


def serve_on_hosts(n, layouts):
    """`serve` across n hosts at 1 Gbit/s (rank 0 on host 1, listening on every address)."""
    hosts("up", str(n), "--rate", "1gbit")
    return start_serve([*layouts, "--threads", "1", "--transport", "mpi", "--host", "0.0.0.0", "--collective-timeout", str(TIMEOUT)],
                       launcher=(HOSTS, "mpirun"), host="10.77.0.1")


def serve_across_4_hosts():
    layouts = ["--mesh", "2x2", "--prefill-layout", "ws2d", "--decode-layout", "ws2d", "--attention", "batch", "--weights", "f32"]
    local = local_chat(layouts)
    p = serve_on_hosts(4, layouts)
    try:
        check(chat("10.77.0.1", 18080) == local, "a streamed chat to serve across 4 hosts (mesh 2x2) equals in-process serve")
    finally:
        p.terminate()
        code = p.wait(timeout=60)
        left = wait_clean(15)
        check(not left, f"serve across 4 hosts stops on SIGTERM (exit {code}) and leaves nothing running ({left})")
        hosts("down")


def serve_across_hosts():
    layouts = ["--mesh", "2", "--prefill-layout", "ws1d", "--decode-layout", "ws1d", "--attention", "heads", "--weights", "f32"]
    local = local_chat(layouts)
    p = serve_on_hosts(2, layouts)
    try:
        check(chat("10.77.0.1", 18080) == local, "a streamed chat to serve across 2 hosts (reached from this namespace) equals in-process serve")
        # The link to host 2 goes down mid-stream: /health never hangs, the job ends non-zero, nothing is left.
        body = json.dumps({"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 2000,
                           "stream": True}).encode()
        req = urllib.request.Request("http://10.77.0.1:18080/v1/chat/completions", data=body, headers={"content-type": "application/json"})
        reader = threading.Thread(target=lambda: _drain(req), daemon=True)
        reader.start()
        time.sleep(2)
        sh("ip", "link", "set", "mi-h2", "down")
        cut, seen = time.time(), set()
        # A request that arrives while the step is stuck waits, then gets 503 (not a hang, not a 500).
        waiting = {}
        plain = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).encode()
        asker = threading.Thread(target=lambda: waiting.update(status=_status(urllib.request.Request(
            "http://10.77.0.1:18080/v1/chat/completions", data=plain, headers={"content-type": "application/json"}))), daemon=True)
        asker.start()
        while p.poll() is None and time.time() - cut < TIMEOUT + 30:
            try:
                seen.add(urllib.request.urlopen("http://10.77.0.1:18080/health", timeout=3).status)
            except urllib.error.HTTPError as e:
                seen.add(e.code)
            except OSError:
                seen.add("refused")
            time.sleep(0.2)
        code = p.wait(timeout=30)
        took = time.time() - cut
        left = wait_clean(max(0.5, cut + TIMEOUT + 10 - time.time()))
        asker.join(timeout=10)
        check(code != 0 and took <= TIMEOUT + 10 and seen <= {200, 503, "refused"} and not left,
              f"serve: a link cut mid-stream ends the job non-zero in {took:.1f} s (exit {code}, /health saw {sorted(map(str, seen))}, left {left})")
        check(waiting.get("status") == 503, f"serve: a request waiting while the mesh is cut gets 503 (got {waiting.get('status')})")
    finally:
        if p.poll() is None:
            p.kill()
        hosts("down")


def _status(req):
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return f"no answer ({e})"


def _drain(req):
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            while r.read(256):
                pass
    except Exception:
        pass


def faults():
    args = [HOSTS, "mpirun", BIN, "generate", "--transport", "mpi", "--mesh", "2", "--threads", "1", "--weights", "f32",
            "--temperature", "0", "--max-tokens", "3000", "--ignore-eos", "--collective-timeout", str(TIMEOUT), *PROMPTS]
    for fault in ["link down", "rank killed"]:
        hosts("up", "2", "--rate", "1gbit")
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # Mid-generation: the ranks have started, loaded (f32, ~2 s) and are generating
            # 3000 tokens for two prompts (a minute at least).
            deadline = time.time() + 60
            while time.time() < deadline and not any(l.startswith("mi-host2 ") and "meshinfer" in l for l in leftovers()):
                time.sleep(0.2)
            time.sleep(5)
            check(p.poll() is None, f"{fault}: a two-prompt generation is running across 2 hosts")
            if fault == "link down":
                sh("ip", "link", "set", "mi-h2", "down")
            else:
                pids = [l.split()[1] for l in leftovers() if l.startswith("mi-host2 ") and "meshinfer" in l and "orted" not in l]
                check(len(pids) >= 1, "rank 1 runs on host 2")
                sh("kill", "-9", *pids)
            cut = time.time()
            try:
                code = p.wait(timeout=TIMEOUT + 10)
            except subprocess.TimeoutExpired:
                code = None
            took = time.time() - cut
            left = wait_clean(max(0.5, cut + TIMEOUT + 10 - time.time()))
            gone = time.time() - cut
            check(code not in (None, 0) and not left,
                  f"{fault} mid-generation: mpirun exits non-zero in {took:.1f} s (exit {code}) and every meshinfer and orted "
                  f"is gone {gone:.1f} s after the fault (allowed {TIMEOUT + 10} s; left {left})")
        finally:
            if p.poll() is None:
                p.kill()
            hosts("down")


preflight()
try:
    cluster_script()
    equal_runs()
    serve_across_4_hosts()
    serve_across_hosts()
    faults()
finally:
    hosts("down", ok=False)
print("hosts_e2e: all checks passed")
