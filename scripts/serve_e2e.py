#!/usr/bin/env python3
"""End-to-end check of `meshinfer serve` with the real `openai` client (issue 11).

Starts the server on the default model, then checks: non-stream == stream at temperature 0,
usage counts, stop strings, n, logprobs, error statuses, 16 concurrent streams each equal to
its solo run, a full queue giving 429, and SIGTERM during streams ending each with a finish
chunk and [DONE] and exit 0. Exits non-zero on the first failure.
Usage: serve_e2e.py MESHINFER_BINARY [extra serve flags...]
"""
import concurrent.futures, json, os, signal, socket, subprocess, sys, time, urllib.request

import openai

BIN = sys.argv[1]
EXTRA = sys.argv[2:]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(*flags):
    port = free_port()
    p = subprocess.Popen([BIN, "serve", "--port", str(port), *EXTRA, *flags], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return p, port
        except Exception:
            if p.poll() is not None:
                raise SystemExit(f"serve exited early: {p.stderr.read()}")
            time.sleep(0.2)
    raise SystemExit("serve did not become healthy within 120 s")


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    print(f"ok: {what}")


def stream_text(client, **kw):
    text, finishes, usage, chunks = "", [], None, 0
    for chunk in client.chat.completions.create(stream=True, **kw):
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.finish_reason is not None:
                finishes.append(c.finish_reason)
    return text, finishes, usage


def main():
    p, port = start("--max-batch", "16", "--max-queue", "32")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    msgs = [{"role": "user", "content": "Name three colours."}]
    try:
        model = client.models.list().data[0].id
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)
        text, finishes, usage = stream_text(client, model=model, messages=msgs, max_tokens=24, temperature=0, stream_options={"include_usage": True})
        check(r.choices[0].message.content == text, "stream and non-stream agree at temperature 0")
        check(finishes == [r.choices[0].finish_reason], "one finish_reason per choice")
        check(usage is not None and usage.completion_tokens == r.usage.completion_tokens and usage.prompt_tokens == r.usage.prompt_tokens,
              "usage chunk matches the non-stream usage")
        check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage adds up")

        full = client.completions.create(model=model, prompt="1, 2, 3, 4, 5,", max_tokens=20, temperature=0).choices[0].text
        cut = client.completions.create(model=r.model, prompt="1, 2, 3, 4, 5,", max_tokens=20, temperature=0, stop=[" 8"])
        check(cut.choices[0].finish_reason == "stop" and cut.choices[0].text == full[: full.index(" 8")], "stop string cuts the text")

        n = client.chat.completions.create(messages=msgs, max_tokens=8, temperature=0.9, n=3, model=r.model)
        check(len(n.choices) == 3 and [c.index for c in n.choices] == [0, 1, 2], "n = 3 gives three choices")

        lp = client.chat.completions.create(messages=msgs, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3, model=r.model)
        content = lp.choices[0].logprobs.content
        check(len(content) == 5 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content), "logprobs with top_logprobs")

        for kw, status in [({"temperature": 5}, 400), ({"max_tokens": -1}, 400), ({"n": 0}, 400), ({"model": "nope"}, 404),
                           ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400), ({"max_tokens": 10**6}, 400)]:
            try:
                client.chat.completions.create(messages=msgs, **{"model": r.model, **kw})
                check(False, f"{kw} gives {status}")
            except openai.APIStatusError as e:
                check(e.status_code == status, f"{kw} gives {status} (got {e.status_code})")

        # A second chat turn reuses the first turn's KV: cached_tokens covers its prompt.
        turn1 = client.chat.completions.create(messages=msgs, max_tokens=16, temperature=0, model=r.model)
        history = msgs + [{"role": "assistant", "content": turn1.choices[0].message.content}, {"role": "user", "content": "And two more?"}]
        turn2 = client.chat.completions.create(messages=history, max_tokens=8, temperature=0, model=r.model)
        check(turn2.usage.prompt_tokens_details.cached_tokens >= turn1.usage.prompt_tokens,
              f"second turn cached_tokens {turn2.usage.prompt_tokens_details.cached_tokens} >= first turn prompt {turn1.usage.prompt_tokens}")

        # 16 concurrent streams, each equal to its solo run.
        prompts = [[{"role": "user", "content": f"Count from {i} to {i + 5}."}] for i in range(16)]
        solo = [client.chat.completions.create(messages=m, max_tokens=20, temperature=0, model=r.model).choices[0].message.content for m in prompts]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda m: stream_text(client, messages=m, max_tokens=20, temperature=0, model=r.model)[0], prompts))
        check(together == solo, "16 concurrent streams equal their solo runs")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        check("meshinfer:batch_size_bucket" in metrics and "meshinfer:num_requests_running" in metrics, "/metrics has vLLM-style names")
    finally:
        p.terminate()
        p.wait(timeout=30)

    # A full queue: 1 running, 1 waiting, the rest 429.
    p, port = start("--max-batch", "1", "--max-queue", "1")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    try:
        def one(_):
            try:
                client.chat.completions.create(messages=msgs, max_tokens=64, temperature=0, model=client.models.list().data[0].id)
                return 200
            except openai.APIStatusError as e:
                return e.status_code
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(one, range(6)))
        check(429 in statuses and 200 in statuses and set(statuses) <= {200, 429}, f"a full queue answers 429 ({statuses})")

        # SIGTERM during 4 streams: each ends with a finish chunk and [DONE]; exit 0.
    finally:
        p.terminate()
        p.wait(timeout=30)
    p, port = start("--max-batch", "4", "--shutdown-timeout", "0")
    results = []

    def raw_stream(i):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
                                     data=json.dumps({"messages": msgs, "max_tokens": 2000, "temperature": 0.8, "stream": True}).encode(),
                                     headers={"content-type": "application/json"})
        lines = [l.decode() for l in urllib.request.urlopen(req, timeout=60)]
        return lines
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(raw_stream, i) for i in range(4)]
        time.sleep(2)
        p.send_signal(signal.SIGTERM)
        results = [f.result() for f in futures]
    code = p.wait(timeout=30)
    for lines in results:
        events = [l[6:].strip() for l in lines if l.startswith("data: ")]
        finishes = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1] if json.loads(e)["choices"]]
        check(events[-1] == "[DONE]" and finishes[-1] is not None, "SIGTERM: a stream ends with a finish chunk and [DONE]")
    check(code == 0, f"SIGTERM: exit 0 (got {code})")
    print("serve e2e: all checks passed")


main()
