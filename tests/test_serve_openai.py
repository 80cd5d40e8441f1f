"""test_serve_openai.py — the official `openai` Python client against `llmint8 serve`.

The client comes from PyPI into a virtual environment under ~/.cache/llmint8-test-openai (made
once, reused). Without network access, or if pip fails, the test is skipped (exit 77): the
same requests are covered by test_serve.py with the standard library.

Run from the repository root: python3 tests/test_serve_openai.py BUILD/llmint8
"""
import json
import os
import subprocess
import sys

from clitest import check, finish
from servetest import Server, generate_text, skip_unless_built

skip_unless_built()

VENV = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "llmint8-test-openai")
PY = os.path.join(VENV, "bin", "python")


def ensure_client():
    if os.path.exists(PY) and subprocess.run([PY, "-c", "import openai"], capture_output=True).returncode == 0:
        return True
    if subprocess.run([sys.executable, "-m", "venv", VENV], capture_output=True).returncode != 0:
        print("SKIP: python3 -m venv failed (python3-venv not installed?)")
        return False
    p = subprocess.run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "openai>=1,<3"],
                       capture_output=True, timeout=600)
    if p.returncode != 0:
        print("SKIP: could not install the openai client from PyPI (no network?):",
              p.stderr.decode(errors="replace")[-300:])
        return False
    return True


if not ensure_client():
    sys.exit(77)

# The client runs in the venv's python; it prints one JSON object of what it got.
CLIENT = r"""
import json, sys
from openai import OpenAI
port, key, prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
out = {}
r = c.completions.create(model="opt-gutenberg-7m", prompt=prompt, max_tokens=n, temperature=0)
out["plain"] = r.choices[0].text
out["finish"] = r.choices[0].finish_reason
out["usage"] = [r.usage.prompt_tokens, r.usage.completion_tokens]
out["stream"] = "".join(ch.choices[0].text for ch in c.completions.create(
    model="x", prompt=prompt, max_tokens=n, temperature=0, stream=True) if ch.choices)
r = c.completions.create(model="x", prompt=prompt, max_tokens=0, echo=True, logprobs=2)
out["echo_text"] = r.choices[0].text
out["echo_logprobs"] = r.choices[0].logprobs.token_logprobs
r = c.completions.create(model="x", prompt=[prompt, prompt], max_tokens=n, temperature=0)
out["list"] = [ch.text for ch in r.choices]
out["models"] = [m.id for m in c.models.list()]
try:
    c.completions.create(model="x", prompt=prompt, max_tokens="many")
    out["bad"] = "accepted"
except Exception as e:
    out["bad"] = type(e).__name__
print(json.dumps(out))
"""

prompt, n = "It was a dark and stormy night", 12
srv = Server(env={"LLMINT8_API_KEY": "k"})
try:
    p = subprocess.run([PY, "-c", CLIENT, str(srv.port), "k", prompt, str(n)], capture_output=True, timeout=600)
    got = json.loads(p.stdout) if p.returncode == 0 else {}
    check("openai client: ran", p.returncode == 0, p.stderr.decode(errors="replace")[-2000:])
    if got:
        want = generate_text(prompt, n)
        check("openai client: plain text equals generate --greedy", got["plain"] == want, (got["plain"], want))
        check("openai client: streamed text equals it too", got["stream"] == want, got["stream"])
        check("openai client: echo gives the prompt back with logprobs (the first None)",
              got["echo_text"] == prompt and got["echo_logprobs"][0] is None and
              all(isinstance(x, float) for x in got["echo_logprobs"][1:]), got)
        check("openai client: a list prompt gives one choice each", got["list"] == [want, want], got["list"])
        check("openai client: models lists the model", got["models"] == ["opt-gutenberg-7m"], got["models"])
        check("openai client: a wrong type is a BadRequestError", got["bad"] == "BadRequestError", got["bad"])
finally:
    srv.stop("openai-client server")
finish()
