/* fuzz_config.c — config_load() on arbitrary bytes as config.json.
 *
 * What config_load accepts must satisfy config.h's promise: every dimension positive and
 * consistent (heads divide hidden, head_dim = hidden / heads), so that the size
 * computations done later from these numbers cannot divide by zero or go negative. */
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_memfile(data, size);
    ModelConfig cfg;
    Error err;
    err.msg[0] = 0;
    if (config_load(path, &cfg, &err) != 0) {
        FUZZ_CHECK(err.msg[0] != 0, "config_load failed without a message");
        return 0;
    }
    FUZZ_CHECK(cfg.arch == ARCH_OPT || cfg.arch == ARCH_BLOOM, "arch %d", (int)cfg.arch);
    FUZZ_CHECK(cfg.vocab_size > 0, "vocab_size %d", cfg.vocab_size);
    FUZZ_CHECK(cfg.hidden > 0, "hidden %d", cfg.hidden);
    FUZZ_CHECK(cfg.n_layers > 0, "n_layers %d", cfg.n_layers);
    FUZZ_CHECK(cfg.n_heads > 0, "n_heads %d", cfg.n_heads);
    FUZZ_CHECK(cfg.hidden % cfg.n_heads == 0, "heads %d do not divide hidden %d", cfg.n_heads, cfg.hidden);
    FUZZ_CHECK(cfg.head_dim * cfg.n_heads == cfg.hidden, "head_dim %d", cfg.head_dim);
    FUZZ_CHECK(cfg.ffn_dim > 0, "ffn_dim %d", cfg.ffn_dim);
    FUZZ_CHECK(cfg.word_embed_proj_dim > 0, "word_embed_proj_dim %d", cfg.word_embed_proj_dim);
    FUZZ_CHECK(cfg.max_positions >= 0, "max_positions %d", cfg.max_positions);
    if (cfg.arch == ARCH_OPT) FUZZ_CHECK(cfg.max_positions > 0, "OPT max_positions %d", cfg.max_positions);
    FUZZ_CHECK(cfg.activation == ACT_RELU || cfg.activation == ACT_GELU_TANH, "activation %d", (int)cfg.activation);
    FUZZ_CHECK(cfg.bos_id >= -1 && cfg.eos_id >= -1 && cfg.pad_id >= -1, "special ids %d %d %d", cfg.bos_id,
               cfg.eos_id, cfg.pad_id);
    FUZZ_CHECK(memchr(cfg.torch_dtype, 0, sizeof cfg.torch_dtype) != NULL, "torch_dtype not terminated");
    FUZZ_CHECK(arch_name(cfg.arch) != NULL, "arch_name");
    /* The products the model loader computes (embedding table, one layer's ffn) fit in 64 bits. */
    int64_t emb = (int64_t)cfg.vocab_size * cfg.word_embed_proj_dim;
    int64_t ffn = (int64_t)cfg.ffn_dim * cfg.hidden;
    FUZZ_CHECK(emb > 0 && ffn > 0, "sizes");
    return 0;
}
