#!/usr/bin/env python3
"""pipeline_figures.py — the pipeline's figures for docs/PERFORMANCE.md, in one run.

Writes a synthetic OPT checkpoint of the opt-1.3b shape (random float16 weights, small values,
one block of random numbers tiled over every tensor), then runs on it, in LLM.int8():
  N = 1: llmint8 generate (prompt + decode) and ppl, in one process;
  N = 2: the same under `mpirun -np 2` (one stage a rank).
For each run: every rank's peak RSS (each rank under /usr/bin/time), the tokens/s llmint8
prints, and the stage lines (busy seconds, activation bytes and seconds moved).

    python3 tools/pipeline_figures.py build/llmint8 [--dir DIR] [--layers N] [--keep]

Timings on a loaded machine are noise: say the load (printed first and last) with them.
"""
import argparse
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile

SHAPE = dict(hidden=2048, layers=24, heads=32, ffn=8192, vocab=50272, positions=2048)


def write_checkpoint(d, shape):
    """config.json + model.safetensors of an OPT model with the given dimensions."""
    h, f, v, L, P = shape["hidden"], shape["ffn"], shape["vocab"], shape["layers"], shape["positions"]
    cfg = {"architectures": ["OPTForCausalLM"], "model_type": "opt", "vocab_size": v, "hidden_size": h,
           "num_hidden_layers": L, "num_attention_heads": shape["heads"], "ffn_dim": f, "word_embed_proj_dim": h,
           "max_position_embeddings": P, "do_layer_norm_before": True, "activation_function": "relu",
           "enable_bias": True, "layer_norm_elementwise_affine": True, "bos_token_id": 2, "eos_token_id": 2,
           "pad_token_id": 1, "torch_dtype": "float16"}
    with open(os.path.join(d, "config.json"), "w") as fp:
        json.dump(cfg, fp, indent=1)
    tensors = [("model.decoder.embed_tokens.weight", [v, h]), ("model.decoder.embed_positions.weight", [P + 2, h]),
               ("model.decoder.final_layer_norm.weight", [h]), ("model.decoder.final_layer_norm.bias", [h])]
    for i in range(L):
        p = f"model.decoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            tensors += [(p + f"self_attn.{proj}.weight", [h, h]), (p + f"self_attn.{proj}.bias", [h])]
        tensors += [(p + "fc1.weight", [f, h]), (p + "fc1.bias", [f]), (p + "fc2.weight", [h, f]), (p + "fc2.bias", [h])]
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            tensors += [(p + ln + ".weight", [h]), (p + ln + ".bias", [h])]
    header, off = {}, 0
    for name, shp in tensors:
        n = 1
        for s in shp:
            n *= s
        header[name] = {"dtype": "F16", "shape": shp, "data_offsets": [off, off + 2 * n]}
        off += 2 * n
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    rng = random.Random(1)
    block = b"".join(struct.pack("<e", rng.gauss(0, 0.02)) for _ in range(1 << 16))
    ones = struct.pack("<e", 1.0) * (1 << 16)
    with open(os.path.join(d, "model.safetensors"), "wb") as fp:
        fp.write(struct.pack("<Q", len(hb)))
        fp.write(hb)
        for name, shp in tensors:
            nbytes = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            src = ones if name.endswith("layer_norm.weight") else block
            while nbytes > 0:
                k = min(nbytes, len(src))
                fp.write(src[:k])
                nbytes -= k


def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p.stdout, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--dir", default=None, help="where the checkpoint goes (default: a temporary directory)")
    ap.add_argument("--layers", type=int, default=SHAPE["layers"])
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    shape = dict(SHAPE, layers=a.layers)
    d = a.dir or tempfile.mkdtemp(prefix="llmint8-opt13b-")
    os.makedirs(d, exist_ok=True)
    if not os.path.exists(os.path.join(d, "model.safetensors")):
        write_checkpoint(d, shape)
    ids = os.path.join(d, "ids.txt")
    rng = random.Random(2)
    with open(ids, "w") as fp:
        fp.write(" ".join(str(rng.randrange(3, shape["vocab"])) for _ in range(1024)))
    prompt = os.path.join(d, "prompt.txt")
    with open(prompt, "w") as fp:
        fp.write(" ".join(str(rng.randrange(3, shape["vocab"])) for _ in range(128)))
    print("load:", open("/proc/loadavg").read().strip(), "| cores:", os.cpu_count())
    timer = ["/usr/bin/time", "-f", "RSS %M"]
    wrap = os.path.join(d, "rank-rss.sh")
    with open(wrap, "w") as fp:
        fp.write(f'#!/bin/sh\nexec /usr/bin/time -o "{d}/rss.${{OMPI_COMM_WORLD_RANK:-0}}" '
                 '-f "rank ${OMPI_COMM_WORLD_RANK:-0} peak RSS %M KB" "$@"\n')
    os.chmod(wrap, 0o755)
    mpirun = ["mpirun", "--oversubscribe", "--allow-run-as-root", "-np", "2", wrap]
    jobs = [("generate", ["generate", d, "--ids", prompt, "-n", "32", "--greedy", "--ignore-eos", "--print-ids"]),
            ("ppl", ["ppl", d, "--ids", ids, "--ctx", "512", "--json"]),
            ("ppl --batch 2", ["ppl", d, "--ids", ids, "--ctx", "512", "--json", "--batch", "2"])]
    for label, args in jobs:
        for n in (1, 2):
            if n == 1 and "--batch" in args:
                continue
            cmd = ([wrap] if n == 1 else mpirun) + [a.binary, *args]
            for r in range(n):
                if os.path.exists(f"{d}/rss.{r}"):
                    os.unlink(f"{d}/rss.{r}")
            out, err = run(cmd)
            rss = []
            for r in range(n):
                with open(f"{d}/rss.{r}") as fp:
                    rss += re.findall(r"rank (\d+) peak RSS (\d+) KB", fp.read())
            speed = [l for l in err.splitlines() if "tokens/s" in l and "stage" not in l]
            if label.startswith("ppl"):
                j = json.loads(out)
                speed = [f"ppl: {j['tokens_per_second']} tokens/s ({j['tokens_scored']} tokens)"]
            print(f"\n== {label}, N = {n}")
            for r, kb in sorted(rss):
                print(f"rank {r}: peak RSS {int(kb) / 1024:.0f} MiB")
            for l in speed + [l for l in err.splitlines() if "stage" in l]:
                print(l)
    print("\nload:", open("/proc/loadavg").read().strip())
    if not a.keep and not a.dir:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
