/* checkpoint.h — a Hugging Face checkpoint directory: config plus tensors.
 *
 * Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`
 * (every shard named in the index must exist, every tensor the index names must be
 * in the shard it names); when there are none, PyTorch's `pytorch_model.bin` or its
 * shards and `pytorch_model.bin.index.json` the same way (torchbin.h), and looks tensors up by their *short* name: the name
 * without the architecture's prefix ("model." OPT, "transformer." BLOOM: arch.h) that
 * some checkpoints carry and others do not (docs/MODELS.md). */
#ifndef LLMINT8_CHECKPOINT_H
#define LLMINT8_CHECKPOINT_H

#include <stdint.h>

#include "config.h"
#include "error.h"
#include "safetensors.h"

typedef struct Checkpoint Checkpoint;

int checkpoint_open(const char *dir, Checkpoint **out, Error *err);
void checkpoint_close(Checkpoint *c);

const ModelConfig *checkpoint_config(const Checkpoint *c);
const char *checkpoint_dir(const Checkpoint *c);

/* Tensor by short name ("decoder.layers.0.fc1.weight", "h.0.mlp.dense_h_to_4h.weight"),
 * found with or without the arch's prefix. NULL if absent. */
const StTensor *checkpoint_find(const Checkpoint *c, const char *short_name);

/* Like checkpoint_find but an absent tensor, a shape other than `shape[0..ndim)`,
 * or a dtype not in `allowed` (bit mask of 1u << DType) is an error that names the
 * tensor, the file, what was expected and what was found. */
int checkpoint_require(const Checkpoint *c, const char *short_name, int ndim, const int64_t *shape,
                       unsigned allowed_dtypes, const StTensor **out, Error *err);

/* All tensors of all shards, for `info` and `convert`. */
size_t checkpoint_count(const Checkpoint *c);
const StTensor *checkpoint_tensor(const Checkpoint *c, size_t i);
/* Strips the architecture's prefix from a stored name (returns a pointer into `name`). */
const char *checkpoint_short_name(const Checkpoint *c, const char *name);

#define DT_MASK(t) (1u << (t))
#define DT_FLOAT_MASK (DT_MASK(DT_F16) | DT_MASK(DT_BF16) | DT_MASK(DT_F32))

#endif
