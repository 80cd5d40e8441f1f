"""synth_checkpoint.py — writes the synthetic checkpoint that `llmint8 bench` builds, to keep.

`llmint8 bench` writes its synthetic model to a temporary directory and deletes it as soon as
it is open, so transformers cannot read it. This program writes the same model to a directory
that stays: the same config.json keys, the same tensors in the same order, drawn the same way
(src/cmd_bench.c, part 2):

  * splitmix64 streams: the LayerNorm outlier dimensions from seed 99 (a partial Fisher-Yates
    shuffle of range(hidden), n = clamp(hidden // 512, 2, 6)), the weights from seed 2024;
  * a table of 65536 half-precision values f16(f32(0.02 * N(0,1))), the normals from
    Box-Muller (u = 1 - uniform, v = uniform, sqrt(-2 ln u) cos(2 pi v)); each weight value is
    table[16 random bits], four values per 64-bit draw (the last numel % 4 take one draw each);
  * linear biases and LayerNorm biases 0; LayerNorm weights 1, except 30 in the outlier
    dimensions of every per-layer LayerNorm (the ones that feed projections).

Tensor names carry the "model." prefix that save_pretrained writes (bench omits it; llmint8
accepts both). Only numpy is needed; the safetensors file is written directly.

Usage: python synth_checkpoint.py OUT_DIR --shape opt-125m [--layers N]
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

# name: (arch, hidden, layers, heads, ffn, vocab, word_embed_proj_dim (0 = hidden), post_ln)
SHAPES = {
    "tiny": ("opt", 64, 2, 4, 256, 1024, 0, False),
    "opt-125m": ("opt", 768, 12, 12, 3072, 50272, 0, False),
    "opt-350m": ("opt", 1024, 24, 16, 4096, 50272, 512, True),
    "opt-1.3b": ("opt", 2048, 24, 32, 8192, 50272, 0, False),
    "opt-2.7b": ("opt", 2560, 32, 32, 10240, 50272, 0, False),
    "bloom-560m": ("bloom", 1024, 24, 16, 4096, 250880, 0, False),
    "bloom-1b1": ("bloom", 1536, 24, 16, 6144, 250880, 0, False),
}
OPT_POSITIONS = 2048
WEIGHT_STD = 0.02
LN_OUTLIER_GAIN = 30.0
M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


class SplitMix64:
    """The generator of cmd_bench.c; draws come out in blocks as uint64 numpy arrays."""

    def __init__(self, seed):
        self.state = seed & M64

    def next_block(self, n):
        # state_i = seed + i * golden (i = 1..n), then the splitmix64 finaliser.
        i = np.arange(1, n + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            z = np.uint64(self.state) + i * np.uint64(GOLDEN)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        self.state = (self.state + n * GOLDEN) & M64
        return z

    def next(self):
        return int(self.next_block(1)[0])


def uniform(draws):
    return (draws >> np.uint64(11)).astype(np.float64) * 2.0**-53


def pick_distinct(rng, rng_range, n):
    all_ = list(range(rng_range))
    out = []
    for i in range(n):
        j = i + rng.next() % (rng_range - i)
        all_[i], all_[j] = all_[j], all_[i]
        out.append(all_[i])
    return out


def normal_table(rng):
    d = rng.next_block(2 * 65536).reshape(65536, 2)
    u = 1.0 - uniform(d[:, 0])
    v = uniform(d[:, 1])
    normal = np.sqrt(-2.0 * np.log(u)) * np.cos(6.283185307179586 * v)
    return (WEIGHT_STD * normal).astype(np.float32).astype(np.float16)


def fill_normal(table, rng, n):
    """n half values: four 16-bit indices per draw, then one draw per leftover value."""
    out = np.empty(n, dtype=np.float16)
    n4 = n // 4
    done = 0
    block = 1 << 22
    while done < n4:
        k = min(block, n4 - done)
        b = rng.next_block(k)
        idx = np.stack([(b >> np.uint64(s)) & np.uint64(0xFFFF) for s in (0, 16, 32, 48)], axis=1)
        out[4 * done:4 * (done + k)] = table[idx.reshape(-1).astype(np.int64)]
        done += k
    for i in range(4 * n4, n):
        out[i] = table[rng.next() & 0xFFFF]
    return out


def tensor_list(shape):
    """(name, dims, fill) in cmd_bench.c's order; fill is normal, zero, one or gain."""
    arch, D, L, _, F, V, E, post_ln = shape
    t = []

    def linear(out, inp, bias, name):
        t.append((name + ".weight", (out, inp), "normal"))
        if bias:
            t.append((name + ".bias", (out,), "zero"))

    def layernorm(dim, planted, name):
        t.append((name + ".weight", (dim,), "gain" if planted else "one"))
        t.append((name + ".bias", (dim,), "zero"))

    if arch == "opt":
        E = E or D
        t.append(("model.decoder.embed_tokens.weight", (V, E), "normal"))
        t.append(("model.decoder.embed_positions.weight", (OPT_POSITIONS + 2, D), "normal"))
        if E != D:
            linear(D, E, False, "model.decoder.project_in")
            linear(E, D, False, "model.decoder.project_out")
        if not post_ln:
            layernorm(D, False, "model.decoder.final_layer_norm")
        for i in range(L):
            p = f"model.decoder.layers.{i}."
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                linear(D, D, True, p + "self_attn." + proj)
            layernorm(D, True, p + "self_attn_layer_norm")
            linear(F, D, True, p + "fc1")
            linear(D, F, True, p + "fc2")
            layernorm(D, True, p + "final_layer_norm")
    else:
        t.append(("transformer.word_embeddings.weight", (V, D), "normal"))
        layernorm(D, False, "transformer.word_embeddings_layernorm")
        for i in range(L):
            p = f"transformer.h.{i}."
            layernorm(D, True, p + "input_layernorm")
            linear(3 * D, D, True, p + "self_attention.query_key_value")
            linear(D, D, True, p + "self_attention.dense")
            layernorm(D, True, p + "post_attention_layernorm")
            linear(F, D, True, p + "mlp.dense_h_to_4h")
            linear(D, F, True, p + "mlp.dense_4h_to_h")
        layernorm(D, False, "transformer.ln_f")
    return t


def config_json(shape):
    arch, D, L, H, F, V, E, post_ln = shape
    if arch == "opt":
        return {
            "model_type": "opt", "architectures": ["OPTForCausalLM"], "hidden_size": D,
            "num_hidden_layers": L, "num_attention_heads": H, "ffn_dim": F, "vocab_size": V,
            "word_embed_proj_dim": E or D, "max_position_embeddings": OPT_POSITIONS,
            "do_layer_norm_before": not post_ln, "_remove_final_layer_norm": False,
            "activation_function": "relu", "enable_bias": True, "layer_norm_elementwise_affine": True,
            "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1, "torch_dtype": "float16",
        }
    return {
        "model_type": "bloom", "architectures": ["BloomForCausalLM"], "hidden_size": D, "n_layer": L,
        "n_head": H, "vocab_size": V, "layer_norm_epsilon": 1e-05,
        "apply_residual_connection_post_layernorm": False, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 3, "torch_dtype": "float16",
    }


def write(out_dir, shape):
    D = shape[1]
    dims_rng = SplitMix64(99)
    n_dims = min(max(D // 512, 2), 6, D)
    outlier_dims = pick_distinct(dims_rng, D, n_dims)

    tensors = tensor_list(shape)
    header, offset = {}, 0
    for name, dims, _ in tensors:
        nbytes = 2 * int(np.prod(dims))
        header[name] = {"dtype": "F16", "shape": list(dims), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)

    os.makedirs(out_dir, exist_ok=True)
    rng = SplitMix64(2024)
    table = normal_table(rng)
    tmp = os.path.join(out_dir, "model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for name, dims, fill in tensors:
            n = int(np.prod(dims))
            if fill == "normal":
                data = fill_normal(table, rng, n)
            elif fill == "zero":
                data = np.zeros(n, dtype=np.float16)
            else:
                data = np.ones(n, dtype=np.float16)
                if fill == "gain":
                    data[outlier_dims] = LN_OUTLIER_GAIN
            f.write(data.astype("<f2").tobytes())
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_json(shape), f, indent=2)
        f.write("\n")
    return outlier_dims


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--shape", default="opt-125m", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, help="fewer layers than the shape has (as bench --layers)")
    a = ap.parse_args()
    shape = list(SHAPES[a.shape])
    if a.layers:
        shape[2] = a.layers
    dims = write(a.out_dir, tuple(shape))
    print(f"{a.out_dir}: synthetic {a.shape} ({shape[2]} layers), outlier dims {dims}")


if __name__ == "__main__":
    sys.exit(main())
