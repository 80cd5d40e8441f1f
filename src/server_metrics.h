/* server_metrics.h — the server's counters and histograms, and their Prometheus text form.
 *
 * Every function may be called from any thread (one mutex inside). The engine's own numbers
 * (queue, running sequences, KV cache, tokens) are read from engine_stats when the text is
 * rendered; what only the server sees (requests by status, latencies, batch sizes per step)
 * is recorded here as it happens. */
#ifndef LLMINT8_SERVER_METRICS_H
#define LLMINT8_SERVER_METRICS_H

#include <stddef.h>

#include "engine.h"

typedef struct Metrics Metrics;

Metrics *metrics_create(void);   /* NULL when out of memory */
void metrics_free(Metrics *m);

/* A finished HTTP request: its status and wall time in seconds. */
void metrics_request(Metrics *m, int status, double seconds);
/* A completion's time to first token, and its mean time per generated token after that. */
void metrics_ttft(Metrics *m, double seconds);
void metrics_token_latency(Metrics *m, double seconds);
/* One engine step: sequences and tokens it ran, its time. */
void metrics_step(Metrics *m, int seqs, int tokens, double seconds);

/* The Prometheus text exposition (version 0.0.4) of everything, with the engine's stats
 * (e may be NULL before the model is loaded). Returns a malloc'ed string or NULL. */
char *metrics_render(Metrics *m, Engine *e);

#endif
