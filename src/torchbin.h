/* torchbin.h — reading PyTorch checkpoint files (`pytorch_model.bin`) without Python.
 *
 * torchbin_open() reads a state_dict written by torch.save (PyTorch >= 1.6, the zip format)
 * and returns it as an StFile, the same view of named tensors that st_open() gives for a
 * safetensors file (safetensors.h), so everything after opening is shared. Validation is
 * as complete as st_open's: after a successful open every StTensor's data[0 .. nbytes) is
 * readable, holds numel x dtype-size bytes in row-major order, and is aligned to its element
 * size. Tensors are F16, BF16 or F32 (I8/U8 too); any other storage type is an error that
 * names the tensor and the dtype.
 *
 * Nothing in the file is executed or imported: the pickle inside is read by pickle.c, which
 * accepts only the names a state_dict uses. Contiguous tensors point into a read-only
 * mapping of the file (no copy; the mapping lives until st_close); a strided view (a
 * transposed weight) is copied out contiguous. Several tensors may share bytes (a tied
 * lm_head.weight is the embedding's storage). The legacy pre-1.6 format, compressed members
 * and archives that are not torch.save output are refused with a message saying so. */
#ifndef LLMINT8_TORCHBIN_H
#define LLMINT8_TORCHBIN_H

#include "error.h"
#include "safetensors.h"

#define TORCHBIN_MAX_PICKLE (64u << 20)  /* bytes of data.pkl (a 2000-tensor state_dict: ~1 MB) */
#define TORCHBIN_MAX_MEMBERS (1u << 20)  /* zip members */
#define TORCHBIN_MAX_NAME 4096           /* bytes of a tensor name */

int torchbin_open(const char *path, StFile **out, Error *err);

#endif
