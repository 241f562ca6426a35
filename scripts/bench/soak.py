"""Soak: N mixed requests (stream, non-stream, cancelled, invalid) against meshinfer serve.
Reports RSS after the first 500 and at the end, and counts 5xx. Usage: soak.py BIN N
(--kv-memory is sized for SmolLM2-135M so the prefix cache is full by request 500.)"""
import concurrent.futures, json, os, random, socket, subprocess, sys, time, urllib.error, urllib.request
import openai

BIN, N = sys.argv[1], int(sys.argv[2])
PER_POSITION = 2 * 30 * 3 * 64 * 2          # f16 K and V bytes per position (SmolLM2-135M, the default cache)
KV = 8000 * PER_POSITION
port = 8460
p = subprocess.Popen([BIN, "serve", "--port", str(port), "--kv-memory", str(KV), "--max-batch", "16", "--max-queue", "256"],
                     stderr=subprocess.DEVNULL)
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2); break
    except Exception:
        time.sleep(0.2)
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)
model = client.models.list().data[0].id

def rss():
    with open(f"/proc/{p.pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

def post(path, body: bytes):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read(); return r.status
    except urllib.error.HTTPError as e:
        return e.code

def one(i):
    rng = random.Random(i)
    kind = rng.random()
    msgs = [{"role": "user", "content": f"Request {i}: say something about the number {rng.randint(0, 10**6)}."}]
    mt = rng.randint(1, 32)
    try:
        if kind < 0.4:
            for _ in client.chat.completions.create(model=model, messages=msgs, max_tokens=mt, stream=True, seed=i): pass
            return 200
        if kind < 0.7:
            client.completions.create(model=model, prompt=msgs[0]["content"], max_tokens=mt, seed=i); return 200
        if kind < 0.85:   # cancelled: read the first chunk, then hang up
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            body = json.dumps({"messages": msgs, "max_tokens": 200, "stream": True}).encode()
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            s.recv(100); s.close(); return 200
        bad = [b"{not json", json.dumps({"messages": "x"}).encode(), json.dumps({"prompt": [10**7]}).encode(),
               json.dumps({"messages": msgs, "n": 0}).encode(), json.dumps({"messages": msgs, "max_tokens": -5}).encode(),
               b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', b"x" * (3 << 20)]
        b = bad[i % len(bad)]
        return post("/v1/completions" if b.startswith(b'{"prompt') else "/v1/chat/completions", b)
    except openai.APIStatusError as e:
        return e.status_code
    except Exception as e:
        return f"error {type(e).__name__}"

statuses = {}
t = time.time()
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for i, st in enumerate(pool.map(one, range(500))): statuses[st] = statuses.get(st, 0) + 1
after500 = rss()
print(f"after 500: RSS {after500:.0f} MB, statuses {statuses}, {time.time() - t:.0f} s", flush=True)
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for i, st in enumerate(pool.map(one, range(500, N))): statuses[st] = statuses.get(st, 0) + 1
end = rss()
metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
cache = [l for l in metrics.splitlines() if l.startswith("meshinfer:prefix_cache_positions ")]
print(f"after {N}: RSS {end:.0f} MB ({(end / after500 - 1) * 100:+.1f}% vs after 500), statuses {statuses}, "
      f"5xx {sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500)}, KV budget {KV / 1e6:.0f} MB, {cache}, {time.time() - t:.0f} s")
p.terminate(); p.wait()
