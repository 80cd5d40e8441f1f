"""test_serve_hostile.py — `llmint8 serve` against clients that misbehave: malformed JSON, wrong
types, huge numbers, invalid UTF-8, oversized bodies and headers, a client sending a byte a
second, clients vanishing mid-stream, a thousand connections at once. Each gets a 4xx/503 or
a closed connection; the server stays healthy, leaks nothing and exits 0.

Run from the repository root: python3 tests/test_serve_hostile.py BUILD/llmint8
"""
import json
import resource
import socket
import time

from clitest import check, finish
from servetest import SANITIZER, Server, raw_exchange, skip_unless_built, status_of

skip_unless_built()

srv = Server("--max-body", "65536", "--timeout", "3", "--max-connections", "2000")
port = srv.port


def post_raw(body, path="/v1/completions", extra=b""):
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + extra + b"\r\n"
    return raw_exchange(port, head + body)


def body_of(raw):
    return raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""


def openai_error(raw, status):
    try:
        e = json.loads(body_of(raw))["error"]
        return status_of(raw) == status and isinstance(e["message"], str) and "type" in e and "param" in e and "code" in e
    except (ValueError, KeyError, TypeError):
        return False


try:
    # ---- bodies that are not what they should be -----------------------------------------
    cases = [
        ("malformed JSON", b'{"prompt": "x", max_tokens: 3}', None),
        ("truncated JSON", b'{"prompt": "It was a dark and', None),
        ("empty body", b"", None),
        ("not an object", b'["prompt"]', None),
        ("trailing garbage", b'{"prompt": "x"} {"prompt": "y"}', None),
        ("prompt missing", b'{"max_tokens": 3}', "prompt"),
        ("prompt a number", b'{"prompt": 5}', "prompt"),
        ("prompt a list of mixed", b'{"prompt": ["a", 5]}', "prompt"),
        ("prompt empty list", b'{"prompt": []}', "prompt"),
        ("token id out of the vocabulary", b'{"prompt": [2, 99999999]}', "prompt"),
        ("token id negative", b'{"prompt": [2, -1]}', "prompt"),
        ("token id fractional", b'{"prompt": [2, 1.5]}', "prompt"),
        ("max_tokens a string", b'{"prompt": "x", "max_tokens": "3"}', "max_tokens"),
        ("max_tokens huge", b'{"prompt": "x", "max_tokens": 1e308}', "max_tokens"),
        ("max_tokens beyond a double", b'{"prompt": "x", "max_tokens": 1e999}', "max_tokens"),
        ("max_tokens negative", b'{"prompt": "x", "max_tokens": -1}', "max_tokens"),
        ("temperature a string", b'{"prompt": "x", "temperature": "hot"}', "temperature"),
        ("temperature negative", b'{"prompt": "x", "temperature": -1}', "temperature"),
        ("top_p zero", b'{"prompt": "x", "top_p": 0}', "top_p"),
        ("top_k fractional", b'{"prompt": "x", "top_k": 2.5}', "top_k"),
        ("seed huge", b'{"prompt": "x", "seed": 1e300}', "seed"),
        ("stop a number", b'{"prompt": "x", "stop": 3}', "stop"),
        ("stop too many", json.dumps({"prompt": "x", "stop": ["s%d" % i for i in range(40)]}).encode(), "stop"),
        ("stream a string", b'{"prompt": "x", "stream": "yes"}', "stream"),
        ("logprobs 99", b'{"prompt": "x", "logprobs": 99}', "logprobs"),
        ("echo a number", b'{"prompt": "x", "echo": 1}', "echo"),
        ("n = 2", b'{"prompt": "x", "n": 2}', "n"),
        ("invalid UTF-8 in a string", b'{"prompt": "\xff\xfe dark"}', None),
        ("a NUL escape", b'{"prompt": "a\\u0000b"}', None),
        ("deep nesting", b'{"prompt": "x", "a": ' + b"[" * 20000 + b"]" * 20000 + b"}", None),
        ("too many prompts", json.dumps({"prompt": ["x"] * 1000}).encode(), "prompt"),
    ]
    for name, body, param in cases:
        raw = post_raw(body)
        ok = openai_error(raw, 400)
        if ok and param:
            ok = json.loads(body_of(raw))["error"]["param"] == param
        check(f"{name}: 400 with an OpenAI error body" + (f" naming '{param}'" if param else ""), ok, raw[:400])

    raw = post_raw(b'{"text": 5}', path="/tokenize")
    check("tokenize with a wrong type: 400", openai_error(raw, 400), raw[:300])
    raw = post_raw(b'{"tokens": [1, "a"]}', path="/detokenize")
    check("detokenize with a wrong type: 400", openai_error(raw, 400), raw[:300])
    raw = raw_exchange(port, b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check("unknown route: 404", openai_error(raw, 404), raw[:300])
    raw = raw_exchange(port, b"GET /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check("GET on the completions route: 405", openai_error(raw, 405), raw[:300])

    # ---- size limits ------------------------------------------------------------------------
    big = json.dumps({"prompt": "x" * 100000}).encode()
    raw = post_raw(big)
    check("a body over --max-body: 413 (or the connection closed)", status_of(raw) in (413, 0), raw[:300])
    chunked = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
               b"".join(b"%x\r\n%s\r\n" % (8192, b"a" * 8192) for _ in range(12)) + b"0\r\n\r\n")
    raw = raw_exchange(port, chunked)
    check("a chunked body running past --max-body: 413 or closed", status_of(raw) in (413, 0), raw[:300])
    flood = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Flood-%d: %s\r\n" % (i, b"y" * 100) for i in range(2000)) + b"\r\n"
    raw = raw_exchange(port, flood)
    check("a header flood (200 KB): 4xx or closed", status_of(raw) == 0 or 400 <= status_of(raw) < 500, raw[:300])
    raw = raw_exchange(port, b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    check("a 100 KB URL: 4xx or closed", status_of(raw) == 0 or 400 <= status_of(raw) < 500, raw[:300])
    raw = raw_exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4)
    check("TLS / binary garbage: 4xx or closed", status_of(raw) == 0 or 400 <= status_of(raw) < 500, raw[:300])
    check("after the size attacks: healthy", srv.alive())

    # ---- a client sending one byte a second -------------------------------------------------
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    t0 = time.time()
    closed_after = None
    request = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"prompt\": \"x\"}    "
    try:
        for i in range(len(request)):
            s.sendall(request[i:i + 1])
            time.sleep(1 if i < 2 else 0.5)
            s.setblocking(False)
            try:
                if s.recv(4096) == b"":
                    closed_after = time.time() - t0
                    break
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
            if i == 1:   # meanwhile, others are served
                check("while a slow client trickles: others are served", srv.alive())
            if time.time() - t0 > 12:
                break
    except (BrokenPipeError, ConnectionResetError):
        closed_after = time.time() - t0
    s.close()
    check("a byte-a-second client is closed after about --timeout (3 s), not served forever",
          closed_after is not None and closed_after < 10, closed_after)

    # ---- clients that vanish mid-stream -----------------------------------------------------
    generated_before = srv.metric("llmint8_generation_tokens_total")
    for k in range(3):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        body = json.dumps({"prompt": "It was a dark and stormy night", "max_tokens": 400, "stream": True,
                           "temperature": 0, "ignore_eos": True}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        got = b""
        while got.count(b"data: ") < 3:
            got += s.recv(4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        s.close()
    t0 = time.time()
    while time.time() - t0 < 30 and (srv.metric("llmint8_running_sequences") or 0) > 0:
        time.sleep(0.1)
    check("clients gone mid-stream: their sequences are cancelled and the KV cache freed",
          srv.metric("llmint8_running_sequences") == 0 and srv.metric("llmint8_kv_cache_tokens_used") == 0,
          srv.get("/metrics")[2][-600:])
    generated = srv.metric("llmint8_generation_tokens_total") - generated_before
    check("clients gone mid-stream: their generation stopped early (far fewer than 3 x 400 tokens)",
          generated < 600, generated)

    # a plain request whose client goes away before the answer
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    body = json.dumps({"prompt": "x", "max_tokens": 200, "ignore_eos": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    s.close()
    time.sleep(0.5)
    check("after clients vanished: healthy", srv.alive())

    # ---- a thousand connections at once ----------------------------------------------------
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 300 if SANITIZER else 1000
    if soft < want + 100 and hard >= want + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    socks = []
    try:
        for i in range(want):
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            if i % 3 == 0:
                c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
            elif i % 3 == 1:
                c.sendall(b"GET /heal")
            socks.append(c)
    except OSError as e:
        print(f"# opened {len(socks)} connections before: {e}")
    check(f"{len(socks)} connections open at once: the server still answers", srv.alive())
    for c in socks:
        c.close()
    time.sleep(0.5)
    st, r = srv.complete(prompt="It was", max_tokens=4, temperature=0)
    check("after the connection storm: a completion works", st == 200, r)
    st, _, b = srv.get("/metrics")
    check("metrics count the 4xx answers", st == 200 and 'llmint8_requests_total{code="400"}' in b.decode())
finally:
    srv.stop("hostile server")

finish()
