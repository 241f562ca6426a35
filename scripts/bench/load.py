"""Load generator for meshinfer serve or llama-server: CONC clients each stream PER chat answers
(64 tokens) with the openai client; prints output tokens/s, TTFT and inter-token p50/p95.
Usage: load.py PORT CONC PER"""
import concurrent.futures, statistics, sys, time, openai
port, conc, per = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
model = client.models.list().data[0].id
def one(i):
    t0 = time.time(); first = None; last = None; gaps = []; n = 0
    for ch in client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Write a short story about robot number {i}."}],
                                             max_tokens=64, temperature=0.8, seed=i, stream=True, stream_options={"include_usage": True}):
        now = time.time()
        if ch.usage: n = ch.usage.completion_tokens
        if ch.choices and ch.choices[0].delta.content:
            if first is None: first = now
            elif last is not None: gaps.append(now - last)
            last = now
    return first - t0, gaps, n
t = time.time()
with concurrent.futures.ThreadPoolExecutor(conc) as pool:
    rs = list(pool.map(one, range(conc * per)))
wall = time.time() - t
ttft = sorted(r[0] for r in rs); gaps = sorted(g for r in rs for g in r[1]); tokens = sum(r[2] for r in rs)
q = lambda a, p: a[min(len(a) - 1, int(p * len(a)))]
print(f"concurrency {conc}: {tokens / wall:.1f} output tok/s, TTFT p50 {q(ttft,.5)*1e3:.0f} ms p95 {q(ttft,.95)*1e3:.0f} ms, ITL p50 {q(gaps,.5)*1e3:.1f} ms p95 {q(gaps,.95)*1e3:.1f} ms ({len(rs)} requests)")
