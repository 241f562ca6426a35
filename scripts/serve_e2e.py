#!/usr/bin/env python3
"""End-to-end check of `meshinfer serve` with the real `openai` client (issue 11).

Starts the server on the default model, then checks: non-stream == stream at temperature 0,
usage counts, stop strings, n (sharing one prefill), logprobs, error statuses, 16 concurrent
streams each equal to its solo run, `: ping` lines on a queued stream, clients that disconnect
(queued or streaming) freeing their slots, a client that stops reading not stalling another
stream, a full queue giving 429, and SIGTERM during streams ending each with a finish chunk and
[DONE] within --shutdown-timeout and exit 0. Without extra flags and with mpirun present, also
`mpirun -np 2 meshinfer serve --transport mpi`: the same answers as the in-process mesh, a
batch above 8 per step, SIGTERM to rank 0 ending gracefully, a killed rank ending the job
non-zero without hanging. Exits non-zero on the first failure.
Usage: serve_e2e.py MESHINFER_BINARY [extra serve flags...]
"""
import concurrent.futures, json, os, shutil, signal, socket, subprocess, sys, time, urllib.error, urllib.request

import openai

BIN = sys.argv[1]
EXTRA = sys.argv[2:]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


MPI_ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def start(*flags, launcher=(), extra=None):
    port = free_port()
    p = subprocess.Popen([*launcher, BIN, "serve", "--port", str(port), *(EXTRA if extra is None else extra), *flags],
                         stderr=subprocess.PIPE, text=True, env=MPI_ENV if launcher else None)
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


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise SystemExit(f"FAIL: /metrics has no {name}")


def wait_for(cond, what, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return check(True, what)
        time.sleep(0.1)
    check(False, what + f" (not within {seconds} s)")


def raw_stream(port, max_tokens, content="Tell me a long story."):
    """A streaming chat request on a bare socket, for clients that stop reading or vanish."""
    body = json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0.8,
                       "stream": True, "logit_bias": {"0": -100, "1": -100, "2": -100}}).encode()   # no end token: it runs its length
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return s


def read_until(sock, marker):
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def rank_pid(launcher, rank):
    """The pid of one rank of an mpirun job (a child of mpirun with that OMPI rank)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == launcher.pid and f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return int(entry)
    raise SystemExit(f"FAIL: no rank {rank} under mpirun {launcher.pid}")


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
        # The choices share one prefill (copies of its KV): at temperature 0 each equals the solo run.
        solo = client.chat.completions.create(messages=msgs, max_tokens=12, temperature=0, model=r.model)
        n3 = client.chat.completions.create(messages=msgs, max_tokens=12, temperature=0, n=3, model=r.model)
        check(all(c.message.content == solo.choices[0].message.content for c in n3.choices)
              and n3.usage.prompt_tokens == solo.usage.prompt_tokens and n3.usage.completion_tokens == 3 * solo.usage.completion_tokens,
              "n = 3 at temperature 0: every choice equals the solo run; the prompt counted once")
        streamed = {}
        for chunk in client.chat.completions.create(messages=msgs, max_tokens=12, temperature=0, n=3, model=r.model, stream=True):
            for c in chunk.choices:
                streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
        check(streamed == {i: solo.choices[0].message.content for i in range(3)}, "n = 3 streamed: each choice equals the solo run")

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

    connections()

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

    def sigterm_stream(i):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
                                     data=json.dumps({"messages": msgs, "max_tokens": 2000, "temperature": 0.8, "stream": True,
                                                      "logit_bias": {"0": -100, "1": -100, "2": -100}}).encode(),   # no end token: only SIGTERM ends it
                                     headers={"content-type": "application/json"})
        lines = [l.decode() for l in urllib.request.urlopen(req, timeout=60)]
        return lines
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(sigterm_stream, i) for i in range(4)]
        time.sleep(2)
        p.send_signal(signal.SIGTERM)
        results = [f.result() for f in futures]
    code = p.wait(timeout=30)
    for lines in results:
        events = [l[6:].strip() for l in lines if l.startswith("data: ")]
        finishes = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1] if json.loads(e)["choices"]]
        check(events[-1] == "[DONE]" and finishes[-1] == "abort", f"SIGTERM: a stream ends within --shutdown-timeout with a finish chunk and [DONE] ({finishes[-1:]}, {events[-1:]})")
    check(code == 0, f"SIGTERM: exit 0 (got {code})")
    if not EXTRA and shutil.which("mpirun"):
        over_mpi()
    print("serve e2e: all checks passed")


def connections():
    """Pings, disconnects and a client that stops reading, on a server running 2 at a time."""
    p, port = start("--max-batch", "2", "--ping-interval", "0.3")
    try:
        slow = raw_stream(port, 1500)             # never read: the server must not wait for it
        gone = raw_stream(port, 1500)
        read_until(gone, b"data: ")
        wait_for(lambda: metric(port, "meshinfer:num_requests_running") == 2, "two streams running")
        queued = raw_stream(port, 64)
        check(b": ping" in read_until(queued, b": ping"), "a queued stream gets ': ping' lines")
        queued.close()
        wait_for(lambda: metric(port, "meshinfer:num_requests_waiting") == 0, "a client gone while queued is freed (/metrics)")
        gone.close()
        wait_for(lambda: metric(port, "meshinfer:num_requests_running") == 1, "a client gone mid-stream frees its slot (/metrics)")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        text, finishes, _ = stream_text(client, model=client.models.list().data[0].id, messages=[{"role": "user", "content": "Hi"}],
                                        max_tokens=32, temperature=0)
        check(finishes == ["length"] or finishes == ["stop"], "a client that stops reading does not stall another stream")
        check(metric(port, "meshinfer:num_requests_running") == 1, "the unread stream is still running beside it")
        slow.close()
        wait_for(lambda: metric(port, "meshinfer:num_requests_running") == 0, "the unread stream is freed when its client goes")
    finally:
        p.terminate()
        p.wait(timeout=30)


def over_mpi():
    """`mpirun -np 2 meshinfer serve --transport mpi --mesh 2`: rank 0 serves HTTP."""
    layouts = ["--mesh", "2", "--attention", "batch", "--prefill-layout", "ws2d", "--decode-layout", "ws2d"]
    prompts = [[{"role": "user", "content": f"Count from {i} to {i + 5}."}] for i in range(16)]

    def answers(port):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda m: stream_text(client, messages=m, max_tokens=16, temperature=0, model=model)[0], prompts))

    p, port = start(*layouts, extra=[])
    try:
        mesh = answers(port)
    finally:
        p.terminate()
        p.wait(timeout=30)
    launcher = ("mpirun", "-np", "2")
    p, port = start(*layouts, "--transport", "mpi", "--max-batch", "16", launcher=launcher, extra=[])
    try:
        check(answers(port) == mesh, "mpirun -np 2 serve --transport mpi: 16 concurrent streams equal serve --mesh 2's")
        steps, small = metric(port, "meshinfer:batch_size_count"), metric(port, 'meshinfer:batch_size_bucket{le="8.0"}')
        check(steps > small, f"over MPI a step batches more than 8 sequences ({steps - small:.0f} of {steps:.0f} steps)")
        # SIGTERM to rank 0 (the process serving HTTP): streams end, every rank exits, mpirun 0.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(lambda: [l.decode() for l in raw_stream(port, 2000).makefile("rb")]) for _ in range(2)]
            time.sleep(2)
            os.kill(rank_pid(p, 0), signal.SIGTERM)
            ends = [f.result() for f in futures]
        check(all(any(l.startswith("data: [DONE]") for l in lines) for lines in ends), "MPI: SIGTERM to rank 0 ends each stream with [DONE]")
        code = p.wait(timeout=60)
        check(code == 0, f"MPI: SIGTERM to rank 0: mpirun exits 0 (got {code})")
    finally:
        if p.poll() is None:
            p.kill()
    # A rank killed mid-stream: no hang — /health answers (200, then 503) or is refused, and the job exits non-zero.
    p, port = start(*layouts, "--transport", "mpi", launcher=launcher, extra=[])
    try:
        stream = raw_stream(port, 2000)
        read_until(stream, b"data: ")
        os.kill(rank_pid(p, 1), signal.SIGKILL)
        seen, deadline = set(), time.time() + 90
        while p.poll() is None and time.time() < deadline:
            try:
                seen.add(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status)
            except urllib.error.HTTPError as e:
                seen.add(e.code)
            except OSError:
                seen.add("refused")
            time.sleep(0.1)
        code = p.wait(timeout=60)
        check(code != 0 and seen <= {200, 503, "refused"}, f"MPI: a killed rank ends the job non-zero (exit {code}, /health saw {sorted(map(str, seen))})")
    finally:
        if p.poll() is None:
            p.kill()


main()
