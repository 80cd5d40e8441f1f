"""interop.py — llmint8 against transformers + bitsandbytes themselves, on the CPU.

Runs inside a virtualenv made by tools/interop/setup.sh (torch, transformers, bitsandbytes,
accelerate, safetensors, numpy); tools/interop/run.sh calls it. Three subcommands:

check   For each model (the fixtures in tests/data/fixtures and models/opt-gutenberg-7m):
        A. `llmint8 convert` writes an 8-bit directory; transformers loads it with
           AutoModelForCausalLM.from_pretrained; its logits are compared with llmint8's int8
           logits of the same directory (dump_logits).
        B. transformers loads the 16-bit checkpoint with load_in_8bit (bitsandbytes quantizes
           it) and writes it with save_pretrained; llmint8 loads that directory; the same
           comparison, plus its int8 weights (CB) and scales (SCB) against convert's.
        C. The model of B run with Fp32Activations: bitsandbytes then quantizes the float32
           activations it is given instead of casting them to float16 first, as llmint8 (and
           the fixtures' int8 goldens) do. That removes the one difference by design; what is
           left is rounding.
        Reported per comparison: max |delta logit| over all positions and the whole vocabulary,
        perplexity of the T ids both ways, positions whose argmax agree, and 16 greedy tokens
        after an 8-token prompt both ways (llmint8 `generate --greedy --print-ids`, transformers
        a plain KV-cache loop). Writes a JSON report; exit status 1 when a comparison that ran
        is outside the tolerances below, 0 otherwise.

bench   Times transformers + bitsandbytes LLM.int8() on a checkpoint directory (prompt tokens/s,
        decode tokens/s, peak RSS) in this process, and prints one JSON object.

time-llmint8  The same timing of `llmint8 generate` on the same ids, as one JSON object.

Tolerances. Whole-model int8 logits are chaotic: one activation rounding that flips (a 1e-6
relative difference in a LayerNorm or in the order of a sum) moves a logit by 0.02-0.1
(tests/data/fixtures/README.md), and the fixtures' planted outliers make them sensitive on
purpose; the float16 cast of the activations (A, B) moves them further. So a comparison passes
when the perplexities agree within ppl_rel, at least argmax_share of the positions agree on the
argmax, the largest |delta logit| is below max_abs_dlogit, and the greedy ids are equal or first
differ where transformers' top-2 margin is below greedy_tie_margin (a near-tie). TOL_FP32 for C,
TOL_AS_SHIPPED for A and B. The int8 weights must be equal bit for bit (convert against
save_pretrained).
"""
import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

# (ppl relative, share of positions whose argmax agrees, largest |delta logit|, greedy near-tie margin)
TOL_FP32 = {"ppl_rel": 0.01, "argmax_share": 0.9, "max_abs_dlogit": 0.5, "greedy_tie_margin": 0.1}
TOL_AS_SHIPPED = {"ppl_rel": 0.05, "argmax_share": 0.9, "max_abs_dlogit": 3.0, "greedy_tie_margin": 0.1}

FIXTURES = ["opt-tiny", "opt-tiny-postln", "opt-tiny-sharded", "opt-tiny-v50272", "bloom-tiny", "bloom-tiny-bf16"]
DEMO_TEXT = ("It was a dark and stormy night; the rain fell in torrents, except at occasional intervals, "
             "when it was checked by a violent gust of wind which swept up the streets.")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- llmint8 side ---------------------------------------------------------------------------

def write_ids(path, ids):
    with open(path, "w") as f:
        f.write(" ".join(str(int(i)) for i in ids) + "\n")


def llmint8_logits(dump, model_dir, ids, work, tag):
    """[T, V] float32 int8 logits from tools/interop/dump_logits."""
    ids_path = os.path.join(work, tag + ".ids")
    out_path = os.path.join(work, tag + ".logits.f32")
    write_ids(ids_path, ids)
    r = subprocess.run([dump, model_dir, ids_path, out_path, "int8"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"dump_logits {model_dir}: {r.stderr.strip()}")
    T, V = map(int, r.stdout.split())
    return np.fromfile(out_path, dtype="<f4").reshape(T, V)


def llmint8_greedy(exe, model_dir, prompt, n, work, tag):
    ids_path = os.path.join(work, tag + ".prompt.ids")
    write_ids(ids_path, prompt)
    r = subprocess.run([exe, "generate", model_dir, "--ids", ids_path, "--greedy", "--print-ids", "-n", str(n),
                        "--ignore-eos"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llmint8 generate {model_dir}: {r.stderr.strip()}")
    return [int(x) for x in r.stdout.split()]


# ---- transformers side ----------------------------------------------------------------------

def hf_versions():
    import bitsandbytes
    import torch
    import transformers
    return {"transformers": transformers.__version__, "bitsandbytes": bitsandbytes.__version__,
            "torch": torch.__version__}


def quiet():
    """bitsandbytes warns at every call that it casts float32 inputs to float16 (docs/TESTING.md
    says it once), and transformers draws progress bars: neither goes to the log."""
    import logging
    import warnings
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def hf_load(model_dir, quantize):
    """from_pretrained on the CPU; quantize=True adds load_in_8bit (a 16-bit source)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    kw = {"device_map": "cpu"}
    # The 16-bit parts (embeddings, LayerNorms, lm_head) in float32, as llmint8 computes them.
    if int(transformers.__version__.split(".")[0]) >= 5:
        kw["dtype"] = torch.float32
    else:
        kw["torch_dtype"] = torch.float32
    if quantize:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    model.eval()
    # transformers 5.x, given a pre-quantized 8-bit directory whose 16-bit tensors are stored as
    # float16 (llmint8 convert's, and its own save_pretrained of a float16 model alike), keeps
    # some of them (LayerNorm weights, embeddings) in float16 although dtype=float32 was asked,
    # and the first LayerNorm then fails ("expected scalar type Half but found Float"). Those
    # parameters are upcast here, which is what 4.x does while loading.
    upcast = 0
    for p in model.parameters():
        if p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
            upcast += 1
    model.interop_upcast = upcast
    return model


def hf_logits(model, ids):
    import torch
    with torch.no_grad():
        out = model(torch.tensor([list(ids)], dtype=torch.long), use_cache=False)
    return out.logits[0].float().numpy()


def hf_greedy(model, prompt, n):
    """n greedy tokens with the KV cache, EOS ignored; also the top1-top2 margins."""
    import torch
    ids, margins, past = [], [], None
    x = torch.tensor([list(prompt)], dtype=torch.long)
    with torch.no_grad():
        for _ in range(n):
            out = model(x, past_key_values=past, use_cache=True)
            past = out.past_key_values
            row = out.logits[0, -1].float()
            top = torch.topk(row, 2).values
            nxt = int(torch.argmax(row))
            ids.append(nxt)
            margins.append(float(top[0] - top[1]))
            x = torch.tensor([[nxt]], dtype=torch.long)
    return ids, margins


class Fp32Activations:
    """Inside this context bitsandbytes quantizes the float32 activations it is given, as
    llmint8 and the fixtures' int8 goldens do, instead of first casting them to float16
    (MatMul8bitLt casts every non-fp16 input: the one place where a float32 model under
    bitsandbytes differs from llmint8 by design). Everything else is bitsandbytes' own code:
    outlier columns, SCA, the int8 matmul (torch._int_mm), the dequantization, the 16-bit
    outlier product."""

    def __enter__(self):
        import bitsandbytes.autograd._functions as autograd_fns
        import bitsandbytes.functional as bnb_f
        self.fns, self.f = autograd_fns, bnb_f
        self.forward, self.quant = autograd_fns.MatMul8bitLt.forward, bnb_f.int8_vectorwise_quant
        current = {}
        forward, quant = self.forward, self.quant

        def forward_keeping_input(ctx, A, B, out=None, bias=None, state=None):
            current["A"] = A
            try:
                return forward(ctx, A, B, out, bias, state)
            finally:
                current.pop("A", None)

        def quant_of_input(A16, threshold=0.0):
            A = current.get("A")
            if A is None or A.dtype == A16.dtype:
                return quant(A16, threshold)
            return quant(A.reshape(-1, A.shape[-1]).clone(), threshold)

        autograd_fns.MatMul8bitLt.forward = staticmethod(forward_keeping_input)
        bnb_f.int8_vectorwise_quant = quant_of_input
        return self

    def __exit__(self, *exc):
        self.fns.MatMul8bitLt.forward = staticmethod(self.forward)
        self.f.int8_vectorwise_quant = self.quant


def int8_linear_count(model):
    import bitsandbytes as bnb
    return sum(1 for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt))


# ---- comparison ------------------------------------------------------------------------------

def ppl_of(logits, ids):
    l = logits[:-1].astype(np.float64)
    mx = l.max(axis=1, keepdims=True)
    lse = np.log(np.exp(l - mx).sum(axis=1)) + mx[:, 0]
    nll = lse - l[np.arange(len(ids) - 1), np.asarray(ids[1:])]
    return float(np.exp(nll.mean()))


def compare(hf, ours, ids, greedy_hf, margins, greedy_ours, tol):
    d = np.abs(hf.astype(np.float64) - ours.astype(np.float64))
    agree = int((hf.argmax(axis=1) == ours.argmax(axis=1)).sum())
    ppl_hf, ppl_ours = ppl_of(hf, ids), ppl_of(ours, ids)
    first_diff = next((i for i, (a, b) in enumerate(zip(greedy_hf, greedy_ours)) if a != b), None)
    rel = abs(ppl_ours / ppl_hf - 1.0)
    problems = []
    if not np.isfinite(d).all():
        problems.append("non-finite logits")
    if rel > tol["ppl_rel"]:
        problems.append(f"ppl differs by {100 * rel:.3g}% (> {100 * tol['ppl_rel']:g}%)")
    if agree < tol["argmax_share"] * len(ids):
        problems.append(f"argmax agrees at {agree}/{len(ids)} positions")
    if float(d.max()) > tol["max_abs_dlogit"]:
        problems.append(f"max |dlogit| {float(d.max()):.3g} > {tol['max_abs_dlogit']}")
    if len(greedy_hf) != len(greedy_ours):
        problems.append("greedy lengths differ")
    elif first_diff is not None and margins[first_diff] >= tol["greedy_tie_margin"]:
        problems.append(f"greedy ids differ at step {first_diff} (top-2 margin {margins[first_diff]:.3g}, not a tie)")
    return {
        "max_abs_dlogit": float(d.max()), "mean_abs_dlogit": float(d.mean()),
        "ppl_transformers": ppl_hf, "ppl_llmint8": ppl_ours, "ppl_rel_diff": rel,
        "argmax_agree": agree, "positions": len(ids),
        "greedy_equal": greedy_hf == greedy_ours, "greedy_first_diff": first_diff,
        "greedy_transformers": greedy_hf, "greedy_llmint8": greedy_ours,
        "min_greedy_margin": min(margins) if margins else None,
        "greedy_margin_at_first_diff": None if first_diff is None else margins[first_diff],
        "ok": not problems, "problems": problems,
    }


def compare_weights(dir_a, dir_b):
    """CB (I8 weights) and SCB of two 8-bit directories: tensors present in both."""
    from safetensors.numpy import load_file

    def load_dir(d):
        out = {}
        for f in sorted(os.listdir(d)):
            if f.endswith(".safetensors"):
                for k, v in load_file(os.path.join(d, f)).items():
                    out[k.split("model.", 1)[-1] if k.startswith("model.") else k] = v
        return out

    a, b = load_dir(dir_a), load_dir(dir_b)
    cb = [k for k in a if a[k].dtype == np.int8 and k in b]
    scb = [k for k in a if k.endswith(".SCB") and k in b]
    cb_diff = sum(int((a[k].astype(np.int16) != b[k].astype(np.int16)).sum()) for k in cb if a[k].shape == b[k].shape)
    cb_total = sum(int(a[k].size) for k in cb)
    shape_mismatch = [k for k in cb + scb if a[k].shape != b[k].shape]
    scb_max = max((float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in scb
                   if a[k].shape == b[k].shape), default=0.0)
    only_a = sorted(set(k for k in a if a[k].dtype == np.int8) - set(cb))
    return {"int8_tensors": len(cb), "int8_values": cb_total, "int8_values_differ": cb_diff,
            "scb_tensors": len(scb), "scb_max_abs_diff": scb_max, "shape_mismatch": shape_mismatch,
            "int8_only_in_convert": only_a}


# ---- check -----------------------------------------------------------------------------------

def models_to_check(root, exe, work):
    """(name, 16-bit dir, ids, prompt, golden int8 logits or None)."""
    fix = os.path.join(root, "tests", "data", "fixtures")
    out = []
    for name in FIXTURES:
        d = os.path.join(fix, name)
        g = json.load(open(os.path.join(d, "golden.json")))
        gold = None
        if "int8" in g and os.path.exists(os.path.join(d, "logits_int8.f32")):
            gold = np.fromfile(os.path.join(d, "logits_int8.f32"), dtype="<f4").reshape(len(g["input_ids"]), -1)
        out.append((name, d, g["input_ids"], g["greedy"]["prompt_ids"], gold))
    demo = os.path.join(root, "models", "opt-gutenberg-7m")
    r = subprocess.run([exe, "tokenize", demo, "-p", DEMO_TEXT], capture_output=True, text=True, check=True)
    ids = [int(x) for x in r.stdout.split()]
    out.append(("opt-gutenberg-7m", demo, ids, ids[:8], None))
    return out


def check_one(a, name, src, ids, prompt, gold):
    """The comparisons of one model; each one's dict has "ok" and, where it ran, the numbers."""
    res = {}
    conv = os.path.join(a.work, name + "-convert")
    hfsave = os.path.join(a.work, name + "-hf8")
    # A. llmint8 convert -> transformers from_pretrained (bitsandbytes as shipped).
    try:
        subprocess.run([a.llmint8, "convert", src, "-o", conv, "--force"], check=True, capture_output=True, text=True)
        model = hf_load(conv, quantize=False)
        g_hf, margins = hf_greedy(model, prompt, 16)
        c = compare(hf_logits(model, ids), llmint8_logits(a.dump, conv, ids, a.work, name + "-A"), ids, g_hf, margins,
                    llmint8_greedy(a.llmint8, conv, prompt, 16, a.work, name + "-A"), TOL_AS_SHIPPED)
        c["bnb_int8_linears"] = int8_linear_count(model)
        c["float16_parameters_upcast_after_load"] = model.interop_upcast
        res["convert_to_transformers"] = c
        del model
    except Exception as e:  # noqa: BLE001 - reported, and counted as a failure
        res["convert_to_transformers"] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    # B. transformers load_in_8bit + save_pretrained -> llmint8 (bitsandbytes as shipped), and
    # C. the same model with float32 activations quantized (Fp32Activations): tight tolerances.
    try:
        model = hf_load(src, quantize=True)
        if os.path.exists(hfsave):
            shutil.rmtree(hfsave)
        model.save_pretrained(hfsave)
        ours = llmint8_logits(a.dump, hfsave, ids, a.work, name + "-B")
        ours_greedy = llmint8_greedy(a.llmint8, hfsave, prompt, 16, a.work, name + "-B")
        g_hf, margins = hf_greedy(model, prompt, 16)
        c = compare(hf_logits(model, ids), ours, ids, g_hf, margins, ours_greedy, TOL_AS_SHIPPED)
        c["bnb_int8_linears"] = int8_linear_count(model)
        res["transformers_to_llmint8"] = c
        with Fp32Activations():
            hf32 = hf_logits(model, ids)
            g_hf, margins = hf_greedy(model, prompt, 16)
        res["fp32_activations"] = compare(hf32, ours, ids, g_hf, margins, ours_greedy, TOL_FP32)
        if gold is not None:
            res["fp32_activations"]["transformers_vs_golden_int8_max_abs_dlogit"] = float(np.abs(hf32 - gold).max())
            res["fp32_activations"]["llmint8_vs_golden_int8_max_abs_dlogit"] = float(np.abs(ours - gold).max())
        del model
        if os.path.isdir(conv):
            w = compare_weights(conv, hfsave)
            w["ok"] = bool(w["int8_tensors"]) and not (w["int8_values_differ"] or w["shape_mismatch"]
                                                       or w["scb_max_abs_diff"] > 0 or w["int8_only_in_convert"])
            w["problems"] = [] if w["ok"] else ["convert's int8 weights or scales differ from save_pretrained's"]
            res["weights_convert_vs_save_pretrained"] = w
    except Exception as e:  # noqa: BLE001
        res.setdefault("transformers_to_llmint8", {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]})
        res.setdefault("fp32_activations", {"ok": False, "error": "not run: " + f"{type(e).__name__}: {e}"[:2000]})
    return res


def run_check(a):
    import torch
    torch.set_num_threads(a.threads)
    vers = hf_versions()
    log(f"interop: transformers {vers['transformers']}, bitsandbytes {vers['bitsandbytes']}, torch {vers['torch']}")
    os.makedirs(a.work, exist_ok=True)
    report = {"versions": vers, "models": {}, "tolerances": {"as_shipped": TOL_AS_SHIPPED, "fp32_activations": TOL_FP32}}
    failed = 0
    for name, src, ids, prompt, gold in models_to_check(a.root, a.llmint8, a.work):
        res = check_one(a, name, src, ids, prompt, gold)
        report["models"][name] = res
        for k, c in res.items():
            if not c.get("ok"):
                failed += 1
                log(f"  {name:17s} {k:34s} FAIL {c.get('error') or '; '.join(c.get('problems', []))}")
            elif "max_abs_dlogit" in c:
                log(f"  {name:17s} {k:34s} ok  max|dlogit| {c['max_abs_dlogit']:.2e}  ppl {c['ppl_transformers']:.6g} vs "
                    f"{c['ppl_llmint8']:.6g}  argmax {c['argmax_agree']}/{c['positions']}  "
                    f"greedy {'equal' if c['greedy_equal'] else 'differs at %d' % c['greedy_first_diff']}")
            else:
                log(f"  {name:17s} {k:34s} ok  {c['int8_values']} int8 values and {c['scb_tensors']} SCB equal")
    report["failed"] = failed
    with open(a.report, "w") as f:
        json.dump(report, f, indent=1)
    log(f"interop: transformers {vers['transformers']}: {failed} comparison(s) failed; report in {a.report}")
    return 1 if failed else 0


# ---- bench -----------------------------------------------------------------------------------

def vm_hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_bench(a):
    import torch
    torch.set_num_threads(a.threads)
    vers = hf_versions()
    ids = [int(x) for x in open(a.ids).read().split()]
    prompt = ids[:a.prompt_tokens]
    t0 = time.perf_counter()
    model = hf_load(a.model, quantize=a.quantize)
    load_s = time.perf_counter() - t0
    rss_load = vm_hwm()
    try:  # the peak of inference alone, as `llmint8 bench` reports it
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    x = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        model(x[:, :4], use_cache=True)  # warm-up
        prompt_s = math.inf
        for _ in range(2):
            t = time.perf_counter()
            out = model(x, use_cache=True)
            prompt_s = min(prompt_s, time.perf_counter() - t)
        past, nxt = out.past_key_values, int(torch.argmax(out.logits[0, -1]))
        t = time.perf_counter()
        for _ in range(a.decode_tokens):
            out = model(torch.tensor([[nxt]], dtype=torch.long), past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, int(torch.argmax(out.logits[0, -1]))
        decode_s = time.perf_counter() - t
    print(json.dumps({
        "versions": vers, "threads": a.threads, "load_seconds": load_s,
        "prompt_tokens": len(prompt), "prompt_tokens_per_second": len(prompt) / prompt_s,
        "decode_tokens": a.decode_tokens, "decode_tokens_per_second": a.decode_tokens / decode_s,
        "peak_rss_load_bytes": rss_load, "peak_rss_generate_bytes": vm_hwm(), "peak_rss_after_load": reset,
        "bnb_int8_linears": int8_linear_count(model),
    }))
    return 0


def run_time_llmint8(a):
    """`llmint8 generate` on the same ids, its speed line parsed, its peak RSS (the
    largest of this process's children, and it has only this one) from getrusage."""
    import re
    ids = [int(x) for x in open(a.ids).read().split()][:a.prompt_tokens]
    prompt_file = a.ids + ".prompt"
    write_ids(prompt_file, ids)
    cmd = [a.llmint8, "generate", a.model, "--ids", prompt_file, "--greedy", "--print-ids", "--ignore-eos",
           "-n", str(a.decode_tokens), "--threads", str(a.threads)]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"llmint8 generate failed: {err.strip()}")
    m = re.search(r"prompt (\d+) tokens, ([0-9.]+) tokens/s; generated (\d+) tokens, ([0-9.]+) tokens/s", err)
    if not m:
        raise SystemExit(f"llmint8 generate: no speed line in: {err.strip()}")
    print(json.dumps({
        "prompt_tokens": int(m.group(1)), "prompt_tokens_per_second": float(m.group(2)),
        "decode_tokens": int(m.group(3)), "decode_tokens_per_second": float(m.group(4)),
        "wall_seconds": wall, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }))
    return 0


def main():
    ap = argparse.ArgumentParser(description="llmint8 against transformers + bitsandbytes on the CPU")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="logits both ways on the fixtures and the demo model")
    c.add_argument("--root", required=True, help="the repository")
    c.add_argument("--llmint8", required=True, help="the llmint8 executable")
    c.add_argument("--dump", required=True, help="the dump_logits helper")
    c.add_argument("--work", required=True, help="scratch directory")
    c.add_argument("--report", required=True, help="JSON report to write")
    c.add_argument("--threads", type=int, default=2)
    b = sub.add_parser("bench", help="time transformers + bitsandbytes on one checkpoint")
    b.add_argument("--model", required=True)
    b.add_argument("--ids", required=True, help="file of token ids: the prompt is the first --prompt-tokens")
    b.add_argument("--quantize", action="store_true", help="a 16-bit checkpoint: load_in_8bit")
    b.add_argument("--prompt-tokens", type=int, default=128)
    b.add_argument("--decode-tokens", type=int, default=32)
    b.add_argument("--threads", type=int, default=2)
    t = sub.add_parser("time-llmint8", help="time llmint8 generate on one checkpoint (same ids as bench)")
    t.add_argument("--llmint8", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--ids", required=True)
    t.add_argument("--prompt-tokens", type=int, default=128)
    t.add_argument("--decode-tokens", type=int, default=32)
    t.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    quiet()
    return {"check": run_check, "bench": run_bench, "time-llmint8": run_time_llmint8}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
