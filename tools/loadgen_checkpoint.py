#!/usr/bin/env python3
"""loadgen_checkpoint.py — write a random-weight OPT checkpoint of a real model's shape, with the
opt-125m tokenizer from tests/data, so that `llmint8 serve` (and tools/loadgen.py) can be
measured on a model as large as a real one without downloading it.

Weights are F16 with random signs, exponents of 2^-8..2^-5 (magnitudes ~0.004..0.06, the scale
of OPT's N(0, 0.02) initialisation) and random mantissas; LayerNorm weights 1, biases 0. The text
such a model writes is noise; its speed is a real model's. Only the standard library is used.

Usage: python3 tools/loadgen_checkpoint.py DIR [--shape opt-125m|opt-1.3b|opt-2.7b]
"""
import argparse
import json
import os
import shutil
import struct
import sys

SHAPES = {"opt-125m": (768, 12, 12, 3072), "opt-1.3b": (2048, 24, 32, 8192), "opt-2.7b": (2560, 32, 32, 10240)}
VOCAB, POSITIONS = 50272, 2048


def random_f16(n):
    hi_table = bytes(((i >> 7) & 1) << 7 | (7 + ((i >> 2) & 3)) << 2 | (i & 3) for i in range(256))
    out = bytearray(2 * n)
    out[0::2] = os.urandom(n)
    out[1::2] = os.urandom(n).translate(hi_table)
    return bytes(out)


def const_f16(n, value):
    return struct.pack("<e", value) * n


def main():
    ap = argparse.ArgumentParser(description="Write a random-weight OPT checkpoint of a real model's shape.")
    ap.add_argument("dir", help="the checkpoint directory to create (must not exist)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="opt-125m")
    args = ap.parse_args()
    out, shape = args.dir, args.shape
    if os.path.lexists(out) or os.path.lexists(out + ".tmp"):
        sys.exit(f"loadgen_checkpoint.py: {out} (or {out}.tmp) already exists; give a new directory")
    hidden, layers, heads, ffn = SHAPES[shape]
    tensors = [("model.decoder.embed_tokens.weight", [VOCAB, hidden], "r"),
               ("model.decoder.embed_positions.weight", [POSITIONS + 2, hidden], "r"),
               ("model.decoder.final_layer_norm.weight", [hidden], 1.0),
               ("model.decoder.final_layer_norm.bias", [hidden], 0.0)]
    for i in range(layers):
        p = f"model.decoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            tensors += [(p + f"self_attn.{proj}.weight", [hidden, hidden], "r"), (p + f"self_attn.{proj}.bias", [hidden], 0.0)]
        tensors += [(p + "fc1.weight", [ffn, hidden], "r"), (p + "fc1.bias", [ffn], 0.0),
                    (p + "fc2.weight", [hidden, ffn], "r"), (p + "fc2.bias", [hidden], 0.0)]
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            tensors += [(p + ln + ".weight", [hidden], 1.0), (p + ln + ".bias", [hidden], 0.0)]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dims, _ in tensors:
        n = 2
        for d in dims:
            n *= d
        header[name] = {"dtype": "F16", "shape": dims, "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    tmp = out + ".tmp"
    os.makedirs(tmp)
    with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for name, dims, kind in tensors:
            n = 1
            for d in dims:
                n *= d
            f.write(random_f16(n) if kind == "r" else const_f16(n, kind))
    config = {"model_type": "opt", "architectures": ["OPTForCausalLM"], "activation_function": "relu",
              "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1, "do_layer_norm_before": True,
              "enable_bias": True, "layer_norm_elementwise_affine": True, "ffn_dim": ffn, "hidden_size": hidden,
              "max_position_embeddings": POSITIONS, "num_attention_heads": heads, "num_hidden_layers": layers,
              "vocab_size": VOCAB, "word_embed_proj_dim": hidden, "torch_dtype": "float16"}
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tok = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "tokenizers", "opt-125m")
    for name in os.listdir(tok):
        shutil.copy(os.path.join(tok, name), tmp)
    os.rename(tmp, out)
    print(f"{out}: {shape} random weights, {offset / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
