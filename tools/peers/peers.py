"""peers.py — llmint8 against llama.cpp, PyTorch + transformers and CTranslate2, side by side.

One random-weight checkpoint of a bench shape (tools/interop/synth_checkpoint.py: the weights
`llmint8 bench` draws, fp16 safetensors + config.json in Hugging Face layout) in BLOOM's
architecture, because llama.cpp runs BLOOM but not OPT; `--shape opt-1.3b` keeps opt-1.3b's
dimensions (hidden 2048, 24 layers, 32 heads, ffn 8192, vocab 50272). From it:

  * llmint8: `build/llmint8 generate CKPT --ids F --greedy --ignore-eos --print-ids`, its
    speed line parsed (the clock starts after the load): int8 (tau = 6 and tau = 0), fp16;
  * llama.cpp through llama-cpp-python: a GGUF of the same tensors (F16, written here with the
    `gguf` package), and Q8_0 made from it by llama.cpp's own quantizer;
  * PyTorch + transformers: fp32, bf16, and fp32 with torch.ao.quantization.quantize_dynamic
    int8 on every nn.Linear but the lm_head;
  * CTranslate2: the checkpoint converted by its TransformersConverter at int8 and int8_float32.

Every runtime is driven with token ids (a one-token-per-id vocabulary is made up where a file
format wants one) and timed the same way, at batch 1 with the same thread count:
  prompt N  the forward pass over N prompt ids from an empty cache, last position's logits;
  decode    after the 128-token prompt, greedy one-token steps (32 tokens; llmint8 times the
            31 forward calls after the first new token, the others the 32 calls);
and CTranslate2's generate_batch at batch 1, 4, 16 (128-token prompts, 32 new tokens each):
aggregate decode tokens/s = B * 32 / (time(33 new tokens) - time(1 new token)).

Rounds interleave the runtimes (each its own process, one after the other, never two at once);
the table gives the median over rounds. Subcommands: `table` (the whole run; what run.sh calls)
and `one` (one runtime once, a JSON line; used by `table`).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools", "interop"))

# bench shape -> the BLOOM model of its dimensions: (arch, hidden, layers, heads, ffn, vocab, 0, False)
SHAPES = {
    "opt-1.3b": ("bloom", 2048, 24, 32, 8192, 50272, 0, False),
    "bloom-560m": ("bloom", 1024, 24, 16, 4096, 250880, 0, False),
    "tiny": ("bloom", 64, 2, 4, 256, 1024, 0, False),
}
PROMPTS = (128, 512)
DECODE = 32
BATCHES = (1, 4, 16)
RUNTIMES = [  # (name in the table, runner, variant)
    ("llmint8 int8 (tau=6)", "llmint8", "int8"),
    ("llmint8 int8 (tau=0)", "llmint8", "int8-tau0"),
    ("llmint8 fp16", "llmint8", "fp16"),
    ("llama.cpp F16", "llama", "f16"),
    ("llama.cpp Q8_0", "llama", "q8_0"),
    ("torch fp32", "torch", "fp32"),
    ("torch bf16", "torch", "bf16"),
    ("torch dynamic int8", "torch", "int8"),
    ("CTranslate2 int8", "ct2", "int8"),
    ("CTranslate2 int8_float32", "ct2", "int8_float32"),
]


def log(msg):
    print(f"peers: {msg}", file=sys.stderr, flush=True)


def prompt_ids(vocab, n=max(PROMPTS)):
    import numpy as np
    return [int(x) for x in np.random.default_rng(42).integers(4, vocab, n)]


# ---- the files every runtime reads ----------------------------------------------------------

def make_checkpoint(work, shape_name):
    import synth_checkpoint  # tools/interop: the weights of `llmint8 bench`
    d = os.path.join(work, f"ckpt-{shape_name}")
    if not os.path.exists(os.path.join(d, "config.json")):
        log(f"writing the random-weight checkpoint {d}")
        synth_checkpoint.write(d, SHAPES[shape_name])
    return d


def make_gguf(work, shape_name, ckpt, threads):
    """F16 GGUF of the checkpoint in llama.cpp's BLOOM layout, then Q8_0 by llama.cpp."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    _, D, L, H, F, V, _, _ = SHAPES[shape_name]
    f16 = os.path.join(work, f"{shape_name}-F16.gguf")
    q8 = os.path.join(work, f"{shape_name}-Q8_0.gguf")
    if not os.path.exists(f16):
        log(f"writing {f16}")
        t = load_file(os.path.join(ckpt, "model.safetensors"))
        w = gguf.GGUFWriter(f16 + ".tmp", "bloom")
        w.add_context_length(2048)
        w.add_embedding_length(D)
        w.add_feed_forward_length(F)
        w.add_block_count(L)
        w.add_head_count(H)
        w.add_head_count_kv(H)
        w.add_layer_norm_eps(1e-5)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        # A made-up byte-level BPE vocabulary, one token per id (ids drive the model).
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list([f"t{i}" for i in range(V)])
        w.add_token_types([gguf.TokenType.NORMAL] * V)
        w.add_token_merges(["t 1"])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(3)

        def put(name, a):  # 2-D weights F16, vectors F32 (as llama.cpp's converter does)
            w.add_tensor(name, a.astype(np.float16 if a.ndim == 2 else np.float32))

        def qkv(a):  # HF BLOOM interleaves q, k, v per head; llama.cpp wants q, k, v blocks
            s = a.reshape(H, 3, D // H, -1)
            return np.concatenate([s[:, j].reshape(D, -1) for j in range(3)]).reshape(a.shape)

        p = "transformer."
        put("token_embd.weight", t[p + "word_embeddings.weight"])
        put("token_embd_norm.weight", t[p + "word_embeddings_layernorm.weight"])
        put("token_embd_norm.bias", t[p + "word_embeddings_layernorm.bias"])
        for i in range(L):
            h = f"{p}h.{i}."
            b = f"blk.{i}."
            for ours, theirs in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"),
                                 ("attn_output", "self_attention.dense"), ("ffn_up", "mlp.dense_h_to_4h"),
                                 ("ffn_down", "mlp.dense_4h_to_h")):
                put(b + ours + ".weight", t[h + theirs + ".weight"])
                put(b + ours + ".bias", t[h + theirs + ".bias"])
            put(b + "attn_qkv.weight", qkv(t[h + "self_attention.query_key_value.weight"]))
            put(b + "attn_qkv.bias", qkv(t[h + "self_attention.query_key_value.bias"]))
        put("output_norm.weight", t[p + "ln_f.weight"])
        put("output_norm.bias", t[p + "ln_f.bias"])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(f16 + ".tmp", f16)
    if not os.path.exists(q8):
        import ctypes
        import llama_cpp
        log(f"quantizing {q8} with llama.cpp")
        qp = llama_cpp.llama_model_quantize_default_params()
        qp.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        qp.nthread = threads
        if llama_cpp.llama_model_quantize(f16.encode(), (q8 + ".tmp").encode(), ctypes.byref(qp)) != 0:
            raise SystemExit("peers: llama_model_quantize failed")
        os.replace(q8 + ".tmp", q8)
    return {"f16": f16, "q8_0": q8}


def make_ct2(work, shape_name, ckpt):
    """The checkpoint converted by CTranslate2 (int8, int8_float32). Its converter wants a
    tokenizer: a word-level one with one token 't<id>' per id, next to links to the weights."""
    out = {}
    V = SHAPES[shape_name][5]
    src = os.path.join(work, f"ckpt-{shape_name}-with-vocab")
    if not os.path.exists(os.path.join(src, "tokenizer.json")):
        from tokenizers import Tokenizer, models, pre_tokenizers
        os.makedirs(src, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            if not os.path.lexists(os.path.join(src, f)):
                os.symlink(os.path.abspath(os.path.join(ckpt, f)), os.path.join(src, f))
        tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t0"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.save(os.path.join(src, "tokenizer.json"))
        with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "t0", "bos_token": "t1",
                       "eos_token": "t2", "pad_token": "t3"}, f)
    import ctranslate2
    for q in ("int8", "int8_float32"):
        d = os.path.join(work, f"ct2-{shape_name}-{q}")
        if not os.path.exists(os.path.join(d, "model.bin")):
            log(f"converting to CTranslate2 {q}: {d}")
            ctranslate2.converters.TransformersConverter(src).convert(d + ".tmp", quantization=q, force=True)
            os.replace(d + ".tmp", d)
        out[q] = d
    return out


# ---- one runtime, once: {"prompt128": tok/s, "prompt512": tok/s, "decode": tok/s, ...} -------

def run_llmint8(a, ids):
    flags = {"int8": ["--precision", "int8"], "int8-tau0": ["--precision", "int8", "--threshold", "0"],
             "fp16": ["--precision", "fp16"]}[a.variant]
    res = {}
    for n in PROMPTS:
        path = os.path.join(a.work, f"ids-{a.shape}-{n}.txt")
        with open(path, "w") as f:
            f.write(" ".join(map(str, ids[:n])) + "\n")
        new = DECODE if n == PROMPTS[0] else 1
        cmd = [a.llmint8, "generate", a.ckpt, "--ids", path, "--greedy", "--ignore-eos", "--print-ids", "-n", str(new),
               "--threads", str(a.threads)] + flags
        p = subprocess.run(cmd, capture_output=True, text=True)
        m = re.search(r"prompt (\d+) tokens, ([0-9.]+) tokens/s; generated (\d+) tokens, ([0-9.]+) tokens/s", p.stderr)
        if p.returncode != 0 or not m:
            raise SystemExit(f"llmint8 generate failed ({p.returncode}): {p.stderr.strip()}")
        res[f"prompt{n}"] = float(m.group(2))
        if new > 1:
            res["decode"] = float(m.group(4))
    return res


def run_llama(a, ids):
    import llama_cpp
    import llama_cpp.llama_cpp as lib
    import numpy as np
    if a.variant == "q8_0" and not a.llama_extra_bufts:
        # llama.cpp's AMX Q8_0 matmul (an "extra buffer type", chosen on CPUs with AMX-INT8)
        # crashes with SIGSEGV on the project's VM; without extra buffer types Q8_0 runs the
        # AVX-512 VNNI dot products (and no repacking).
        default_params = lib.llama_model_default_params

        def no_extra_bufts():
            p = default_params()
            p.use_extra_bufts = False
            return p
        lib.llama_model_default_params = no_extra_bufts
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=max(PROMPTS) + DECODE + 8, n_batch=max(PROMPTS),
                          n_ubatch=max(PROMPTS), n_threads=a.threads, n_threads_batch=a.threads,
                          flash_attn=True, verbose=False)  # flash attention: llama-bench's default on CPU

    def last_logits():
        return llm.scores[llm.n_tokens - 1]

    llm.reset()
    llm.eval(ids[:8])  # warm-up
    res = {}
    for n in PROMPTS:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids[:n])
        res[f"prompt{n}"] = n / (time.perf_counter() - t0)
        if n == PROMPTS[0]:
            nxt = int(np.argmax(last_logits()))
            t0 = time.perf_counter()
            for _ in range(DECODE):
                llm.eval([nxt])
                nxt = int(np.argmax(last_logits()))
            res["decode"] = DECODE / (time.perf_counter() - t0)
    res["version"] = llama_cpp.__version__
    return res


def run_torch(a, ids):
    import torch
    import transformers
    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.variant == "bf16" else torch.float32
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(a.ckpt, dtype=dtype)
    except TypeError:  # transformers 4: torch_dtype
        model = transformers.AutoModelForCausalLM.from_pretrained(a.ckpt, torch_dtype=dtype)
    model.eval()
    if a.variant == "int8":  # every projection but the lm_head
        torch.ao.quantization.quantize_dynamic(model.transformer, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)

    def forward(x, past):
        out = model(input_ids=torch.tensor([x]), past_key_values=past, use_cache=True)
        return out.logits[0, -1], out.past_key_values

    res = {}
    with torch.inference_mode():
        forward(ids[:8], None)  # warm-up
        for n in PROMPTS:
            t0 = time.perf_counter()
            logits, past = forward(ids[:n], None)
            res[f"prompt{n}"] = n / (time.perf_counter() - t0)
            if n == PROMPTS[0]:
                nxt = int(torch.argmax(logits))
                t0 = time.perf_counter()
                for _ in range(DECODE):
                    logits, past = forward([nxt], past)
                    nxt = int(torch.argmax(logits))
                res["decode"] = DECODE / (time.perf_counter() - t0)
    res["version"] = f"torch {torch.__version__}, transformers {transformers.__version__}"
    return res


def run_ct2(a, ids):
    import ctranslate2
    gen = ctranslate2.Generator(a.model, device="cpu", inter_threads=1, intra_threads=a.threads)
    toks = [f"t{i}" for i in ids]
    opts = dict(sampling_topk=1, include_prompt_in_result=False)

    def batch_time(prompts, new):
        t0 = time.perf_counter()
        r = gen.generate_batch(prompts, max_length=new, min_length=new, **opts)
        dt = time.perf_counter() - t0
        got = len(r[0].sequences_ids[0])
        if got != new:
            raise SystemExit(f"CTranslate2 generated {got} tokens, not {new}")
        return dt

    gen.generate_batch([toks[:8]], max_length=1, **opts)  # warm-up
    res = {}
    for n in PROMPTS:  # the prompt and its first new token, as the others' last-logits pass
        res[f"prompt{n}"] = n / batch_time([toks[:n]], 1)
    t0 = time.perf_counter()
    gen.score_batch([toks[:PROMPTS[-1]]])
    res["score512"] = PROMPTS[-1] / (time.perf_counter() - t0)
    # decode: generate_tokens yields each new token; the steps after the first are decode steps.
    stamps = []
    for _ in gen.generate_tokens(toks[:PROMPTS[0]], max_length=DECODE, min_length=DECODE, sampling_topk=1):
        stamps.append(time.perf_counter())
    if len(stamps) != DECODE:
        raise SystemExit(f"CTranslate2 generate_tokens gave {len(stamps)} tokens, not {DECODE}")
    res["decode"] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    if a.batches:
        for b in a.batches:
            prompts = [toks[:PROMPTS[0]]] * b
            t1 = batch_time(prompts, 1)
            t33 = batch_time(prompts, DECODE + 1)
            res[f"batch{b}_decode"] = b * DECODE / (t33 - t1)
    res["version"] = f"ctranslate2 {ctranslate2.__version__}"
    return res


def cmd_one(a):
    vocab = SHAPES[a.shape][5]
    ids = prompt_ids(vocab)
    r = {"llmint8": run_llmint8, "llama": run_llama, "torch": run_torch, "ct2": run_ct2}[a.runner](a, ids)
    print(json.dumps(r), flush=True)
    return 0


# ---- the whole run --------------------------------------------------------------------------

def cmd_table(a):
    os.makedirs(a.work, exist_ok=True)
    ckpt = make_checkpoint(a.work, a.shape)
    only = set(a.only.split(",")) if a.only else {r for _, r, _ in RUNTIMES}
    models = {}
    if "llama" in only:
        models["llama"] = make_gguf(a.work, a.shape, ckpt, a.threads)
    if "ct2" in only:
        models["ct2"] = make_ct2(a.work, a.shape, ckpt)
    if a.rounds == 0:
        log(f"files ready in {a.work}")
        return 0
    runs = [r for r in RUNTIMES if r[1] in only]
    results = {name: [] for name, _, _ in runs}
    versions = {}
    load = []
    for rnd in range(a.rounds):
        for name, runner, variant in runs:
            cmd = [sys.executable, os.path.abspath(__file__), "one", runner, variant, "--shape", a.shape,
                   "--threads", str(a.threads), "--work", a.work, "--ckpt", ckpt, "--llmint8", a.llmint8]
            if runner in models:
                cmd += ["--model", models[runner][variant]]
            if runner == "ct2" and variant == "int8" and rnd == 0 and a.batch:
                cmd += ["--batches", ",".join(map(str, BATCHES))]
            load.append(os.getloadavg()[0])
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                log(f"round {rnd + 1}: {name} failed: {p.stderr.strip()[-2000:]}")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            versions[runner] = r.pop("version", None)
            results[name].append(r)
            log(f"round {rnd + 1}/{a.rounds} {name} ({time.perf_counter() - t0:.0f} s): "
                + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))
    report = {"shape": a.shape, "dims": SHAPES[a.shape], "threads": a.threads, "rounds": a.rounds,
              "loadavg_1min_before_each_run": load, "versions": versions, "results": results,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    print_table(report)
    return 0 if all(results.values()) else 1


def med(rows, key):
    v = [r[key] for r in rows if key in r]
    return statistics.median(v) if v else None


def print_table(rep):
    res = rep["results"]
    _, D, L, H, F, V, _, _ = rep["dims"]
    print(f"\n{rep['shape']} dimensions in BLOOM's architecture (hidden {D}, {L} layers, {H} heads, ffn {F}, "
          f"vocab {V}), random weights; {rep['threads']} thread(s); median of {rep['rounds']} interleaved "
          f"round(s); {rep['date']}; 1-min load average before the runs {min(rep['loadavg_1min_before_each_run']):.1f}"
          f"-{max(rep['loadavg_1min_before_each_run']):.1f}\n")
    print("| runtime, weights | prompt 128 tok/s | prompt 512 tok/s | decode tok/s |")
    print("|---|---:|---:|---:|")
    f = lambda x: "n/a" if x is None else f"{x:.1f}"
    for name, rows in res.items():
        print(f"| {name} | {f(med(rows, 'prompt128'))} | {f(med(rows, 'prompt512'))} | {f(med(rows, 'decode'))} |")
    ct = res.get("CTranslate2 int8", [])
    batch = {b: med(ct, f"batch{b}_decode") for b in BATCHES}
    if any(v is not None for v in batch.values()):
        print("\nCTranslate2 int8 generate_batch, aggregate decode tok/s (128-token prompts, 32 new tokens each): "
              + ", ".join(f"batch {b} {f(v)}" for b, v in batch.items()))
    if med(ct, "score512") is not None:
        print(f"CTranslate2 int8 score_batch (all 512 positions' log-probs): {f(med(ct, 'score512'))} tok/s")

    def ratio(num, den, key, key2=None):
        n, d = med(res.get(num, []), key), med(res.get(den, []), key2 or key)
        return None if n is None or d is None or d == 0 else n / d

    i8, z, h = "llmint8 int8 (tau=6)", "llmint8 int8 (tau=0)", "llmint8 fp16"
    lines = [
        ("int8 decode / llama.cpp Q8_0", ratio(i8, "llama.cpp Q8_0", "decode"), ">= 1.2"),
        ("int8 (tau=0) decode / llama.cpp Q8_0", ratio(z, "llama.cpp Q8_0", "decode"), ">= 1.2"),
        ("fp16 decode / llama.cpp F16", ratio(h, "llama.cpp F16", "decode"), ">= 1.0"),
        ("int8 decode / CTranslate2 int8", ratio(i8, "CTranslate2 int8", "decode"), ">= 1.2"),
        ("int8 (tau=0) decode / CTranslate2 int8", ratio(z, "CTranslate2 int8", "decode"), ">= 1.2"),
        ("int8 prompt 128 / llama.cpp Q8_0", ratio(i8, "llama.cpp Q8_0", "prompt128"), ">= 2"),
        ("int8 prompt 512 / llama.cpp Q8_0", ratio(i8, "llama.cpp Q8_0", "prompt512"), ">= 2"),
        ("int8 prompt 128 / CTranslate2 int8", ratio(i8, "CTranslate2 int8", "prompt128"), ">= 2"),
        ("int8 prompt 512 / CTranslate2 int8", ratio(i8, "CTranslate2 int8", "prompt512"), ">= 2"),
        ("int8 prompt 128 / torch bf16", ratio(i8, "torch bf16", "prompt128"), ">= 1.8 (AVX512-BF16 CPUs)"),
        ("int8 prompt 512 / torch bf16", ratio(i8, "torch bf16", "prompt512"), ">= 1.8 (AVX512-BF16 CPUs)"),
        ("decomposition cost, prompt 512 (tau=0 / tau=6 - 1)", None if ratio(z, i8, "prompt512") is None
         else ratio(z, i8, "prompt512") - 1, "<= 0.10"),
        ("decomposition cost, decode (tau=0 / tau=6 - 1)", None if ratio(z, i8, "decode") is None
         else ratio(z, i8, "decode") - 1, "<= 0.10"),
    ]
    if batch.get(16) is not None and med(res.get(i8, []), "decode"):
        lines.append(("CTranslate2 int8 batch 16 aggregate / llmint8 int8 batch 1 decode",
                      batch[16] / med(res[i8], "decode"), "(issue: llmint8 batch 16 >= CTranslate2 batch 16)"))
    print("\n| ratio | value | target |")
    print("|---|---:|---|")
    for what, v, target in lines:
        print(f"| {what} | {'n/a' if v is None else f'{v:.2f}'} | {target} |")
    if rep.get("versions"):
        print("\nversions: " + "; ".join(f"{k}: {v}" for k, v in rep["versions"].items() if v))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="the whole interleaved run and its table")
    t.add_argument("--shape", default="opt-1.3b", choices=sorted(SHAPES))
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--rounds", type=int, default=3, help="0: only write the files")
    t.add_argument("--work", default=os.path.join(ROOT, "build-peers"))
    t.add_argument("--llmint8", default=os.path.join(ROOT, "build", "llmint8"))
    t.add_argument("--only", help="comma-separated runners: llmint8,llama,torch,ct2 (default all)")
    t.add_argument("--no-batch", dest="batch", action="store_false", help="skip CTranslate2's generate_batch")
    t.add_argument("--json", help="also write the raw results here")
    o = sub.add_parser("one", help="one runtime once, as a JSON line")
    o.add_argument("runner", choices=["llmint8", "llama", "torch", "ct2"])
    o.add_argument("variant")
    o.add_argument("--shape", default="opt-1.3b", choices=sorted(SHAPES))
    o.add_argument("--threads", type=int, default=2)
    o.add_argument("--work", required=True)
    o.add_argument("--ckpt", required=True)
    o.add_argument("--llmint8", required=True)
    o.add_argument("--model", help="the GGUF file or CTranslate2 directory")
    o.add_argument("--llama-extra-bufts", action="store_true", help="Q8_0 with AMX/repacked buffers")
    o.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[])
    a = ap.parse_args()
    return cmd_table(a) if a.cmd == "table" else cmd_one(a)


if __name__ == "__main__":
    sys.exit(main())
