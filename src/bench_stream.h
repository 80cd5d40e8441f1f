/* bench_stream.h — the memory bandwidth `llmint8 bench` compares decoding with: a streaming
 * read of a buffer much larger than the caches, by the CPU backend's worker threads
 * (cpu_pool.h), as the decode GEMVs read the weights. Decoding one token has to read every
 * weight once, so bytes per token / this bandwidth is the fastest decode can be (the roof). */
#ifndef LLMINT8_BENCH_STREAM_H
#define LLMINT8_BENCH_STREAM_H

#include <stddef.h>

#include "error.h"

/* Best of a few passes over `bytes` bytes read with `threads` threads (<= 0: one per core),
 * in bytes per second; 0 with err when the buffer cannot be allocated. */
double bench_stream_read(size_t bytes, int threads, Error *err);

#endif
