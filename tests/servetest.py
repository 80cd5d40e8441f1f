"""servetest.py — what the server tests share: starting `llmint8 serve` on a free port,
talking HTTP to it with the standard library, stopping it and checking how it ended.

Exits 77 (skipped) when the binary was built without libmicrohttpd.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from clitest import BIN, SANITIZER, check

MODEL = "models/opt-gutenberg-7m"


def skip_unless_built():
    p = subprocess.run([BIN, "serve", "--help"], capture_output=True)
    if p.returncode != 0 and b"not built" in p.stderr:
        print("SKIP: llmint8 was built without libmicrohttpd (serve is not available)")
        sys.exit(77)


class Server:
    """A running `llmint8 serve MODEL --port 0 ARGS`; its stderr is collected by a thread."""

    def __init__(self, *args, model=MODEL, env=None, ready=True, launcher=()):
        # launcher: words before the binary (["mpirun", "-np", "2"] for a pipeline)
        self.proc = subprocess.Popen([*launcher, BIN, "serve", model, "--port", "0", *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=dict(os.environ, **(env or {})))
        self.lines = []
        self.port = None
        got_port = threading.Event()

        def reader():
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace")
                self.lines.append(line)
                if "listening on http://" in line and self.port is None:
                    self.port = int(line.rsplit(":", 1)[1])
                    got_port.set()
            got_port.set()

        self.thread = threading.Thread(target=reader, daemon=True)
        self.thread.start()
        got_port.wait(120)
        if self.port is None:
            raise RuntimeError("the server did not start: " + "".join(self.lines))
        if ready:
            self.wait_ready()

    def wait_ready(self, timeout=300):
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited: " + "".join(self.lines))
            time.sleep(0.1)
        raise RuntimeError("the server never became ready")

    def request(self, method, path, body=None, headers=None, timeout=300):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
            h = {"Content-Type": "application/json"} if body is not None else {}
            h.update(headers or {})
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body, **kw)

    def complete(self, **req):
        """POST /v1/completions; returns (status, parsed JSON or the raw body)."""
        st, _, body = self.post("/v1/completions", req)
        try:
            return st, json.loads(body)
        except ValueError:
            return st, body

    def stream(self, **req):
        """A streamed completion: returns (status, [event JSON...], saw [DONE], content type)."""
        req["stream"] = True
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            c.request("POST", "/v1/completions", body=json.dumps(req), headers={"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read().decode("utf-8")
            events, done = [], False
            for block in data.split("\n\n"):
                if not block.startswith("data: "):
                    continue
                payload = block[6:]
                if payload == "[DONE]":
                    done = True
                else:
                    events.append(json.loads(payload))
            return r.status, events, done, r.getheader("Content-Type")
        finally:
            c.close()

    def metric(self, name):
        st, _, body = self.get("/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def alive(self):
        try:
            return self.proc.poll() is None and self.get("/health", timeout=30)[0] == 200
        except OSError:
            return False

    def wait_exit(self, timeout):
        """Waits for the server (or mpirun) to exit, killing it after timeout seconds:
        (exit status or -999, everything it wrote to stderr)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = -999
        self.thread.join(10)
        return rc, "".join(self.lines)

    def stop(self, name="server"):
        """SIGTERM; checks that it exits 0 and that no sanitizer spoke."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc, log = self.wait_exit(120)
        bad = "Sanitizer" in log or "runtime error:" in log
        check(f"{name}: exits 0 on SIGTERM without sanitizer reports", rc == 0 and not bad, f"rc={rc}\n{log[-3000:]}")
        return rc


def raw_exchange(port, data, timeout=10, read=True):
    """Sends raw bytes; returns what came back until the server closed (or the timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        if read:
            try:
                while True:
                    k = s.recv(65536)
                    if not k:
                        break
                    out += k
            except (socket.timeout, ConnectionResetError):
                pass
        return out
    finally:
        s.close()


def status_of(raw):
    """The status code of a raw HTTP response, or 0 for none (the connection was closed)."""
    try:
        return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.") else 0
    except (IndexError, ValueError):
        return 0


def generate_text(prompt, n, model=MODEL, extra=()):
    """`llmint8 generate --greedy --outliers per-token`: the continuation only."""
    p = subprocess.run([BIN, "generate", model, "-p", prompt, "-n", str(n), "--greedy", "--outliers", "per-token",
                        *extra], capture_output=True, timeout=600)
    out = p.stdout.decode("utf-8")
    assert p.returncode == 0, p.stderr
    assert out.startswith(prompt) and out.endswith("\n"), out
    return out[len(prompt):-1]


__all__ = ["Server", "raw_exchange", "status_of", "generate_text", "skip_unless_built", "SANITIZER", "MODEL"]
