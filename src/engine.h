/* engine.h — continuous batching: many requests served at once over the model's step API.
 *
 * An Engine owns a loaded Model's whole KV cache (it removes the default sequence) and turns
 * requests (a prompt, how many tokens to generate, how to sample them) into calls of
 * model_step: each call runs a piece of every running request — a chunk of up to
 * prefill_chunk prompt tokens for one still reading its prompt, the last sampled token for
 * one that is generating — and the engine samples, detokenizes, looks for stop strings and
 * hands the results to the request's callbacks. Requests join and leave between steps.
 *
 * Admission: a request reserves prompt + max_tokens tokens of the cache (model_seq_add) when
 * it starts running, and gives them back when it ends. Waiting requests start in the order
 * they came, while fewer than max_running run and the head's reservation fits; one whose
 * reservation exceeds the context or the whole cache is refused at submit.
 *
 * Threads: one thread calls engine_step (typically in a loop with engine_wait); any thread
 * may call engine_submit, engine_cancel and engine_stats. The callbacks run on the thread
 * that calls engine_step (or engine_free), with no lock held: they may call engine_submit,
 * engine_cancel and engine_stats, but not engine_step or engine_free.
 *
 * Results: with fp16, or LLM.int8() with per-token outliers, and greedy or seeded sampling, a
 * request's tokens and logprobs are bitwise what it produces running alone, whatever else
 * runs and however its prompt is chunked (docs/ENGINE.md). With per-call outliers they can
 * differ (the outlier columns are chosen over all rows of a forward call). */
#ifndef LLMINT8_ENGINE_H
#define LLMINT8_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

typedef struct Engine Engine;

typedef struct EngineOptions {
    int max_running;     /* requests in the batch at once, 1..MODEL_LOGIT_ROWS; <= 0: 4 */
    int prefill_chunk;   /* most prompt tokens one request runs per step; <= 0: 128 */
    int step_tokens;     /* most tokens of all requests per step, >= max_running;
                            <= 0: model_capacity() (or max_running if larger) */
    int max_queue;       /* requests waiting to start; more -> ENGINE_FULL; <= 0: no limit */
} EngineOptions;

/* The most top logprobs a request may ask for. */
#define ENGINE_MAX_LOGPROBS 20

typedef struct EngineToken {         /* one token handed to on_token */
    int32_t id;
    bool prompt;                     /* an echoed prompt token (echo), not a generated one */
    int index;                       /* its position in the prompt (prompt) or the output */
    /* With logprobs: log softmax of the raw logits (before penalty and temperature) at the
     * position that predicts this token; NAN for the first prompt token (nothing predicts
     * it), and NAN for every token when the request did not ask for logprobs. */
    double logprob;
    int n_top;                       /* with logprobs N: the N most likely ids there (0 for
                                        the first prompt token) ... */
    const int32_t *top_ids;          /* [n_top], most likely first, ties by the lower id */
    const double *top_logprobs;      /* [n_top]; both arrays valid during the call only */
    /* The output text this token releases (valid during the call only): may be empty, as an
     * incomplete UTF-8 character, or text that may be the start of a stop string, is held
     * back until resolved. Prompt tokens' text (echo) is never held for stop strings. */
    const char *text;
    size_t text_len;
    size_t text_offset;              /* where in the request's output text this piece starts */
} EngineToken;

typedef struct EngineDone {
    /* "stop" (the eos token or a stop string), "length" (max_tokens), "cancelled", "error" */
    const char *finish_reason;
    int prompt_tokens, completion_tokens;   /* completion_tokens: the tokens given to on_token
                                               as generated (an eos that ends the request
                                               is not one of them) */
    /* Text still held back at the end (an incomplete UTF-8 character as U+FFFD, or the start
     * of a stop string that never completed), at text_offset; usually empty. It is part of
     * the output: append it. Valid during the call only. */
    const char *text;
    size_t text_len, text_offset;
    const char *error;               /* the message when "error", else NULL */
} EngineDone;

typedef struct EngineRequest {
    const int32_t *prompt; int n_prompt;     /* copied at submit; n_prompt >= 1 */
    int max_tokens;                          /* new tokens, >= 0 (0: echo/scoring only) */
    SamplerConfig sampling;                  /* sampler.h; its seed is this request's */
    int32_t eos_id;                          /* -1: none */
    bool ignore_eos;
    const char *const *stop; int n_stop;     /* stop strings (copied; non-empty, at most 16):
                                                the output ends before the first occurrence
                                                in the generated text, which is not included */
    int logprobs;                            /* 0: none; N in 1..ENGINE_MAX_LOGPROBS: the
                                                chosen token's logprob and the top N */
    bool echo;                               /* hand the prompt tokens to on_token first
                                                (prompt = true), with logprobs as asked */
    void (*on_token)(void *ctx, const EngineToken *t);   /* may be NULL */
    void (*on_done)(void *ctx, const EngineDone *d);     /* exactly once per accepted request */
    void *ctx;
} EngineRequest;

enum { ENGINE_OK = 0, ENGINE_FULL = 1 };

/* Takes over m's KV cache (removing its default sequence); tok (may be NULL: no text, no
 * stop strings) must outlive the engine. -1 with a message for bad options. */
Engine *engine_create(Model *m, const Tokenizer *tok, const EngineOptions *o, Error *err);
/* The same over any StepTarget (model.h): a pipeline's (pipeline_step_target) runs every
 * step through its stages, each sequence mirrored on every stage. The target's `self` must
 * outlive the engine. A target without prompt_logits refuses echo with logprobs at submit. */
Engine *engine_create_on(const StepTarget *t, const Tokenizer *tok, const EngineOptions *o, Error *err);
/* Requests still queued or running get on_done("cancelled") here, on this thread. */
void engine_free(Engine *e);

/* ENGINE_OK and the request's id in *id (ids start at 1): accepted, on_done will be called.
 * ENGINE_FULL: max_queue requests already wait (a server answers 503). -1 with a message: a
 * request that can never run (no prompt, ids outside the vocabulary, prompt + max_tokens
 * beyond the context or the whole cache, bad sampling settings, stop strings without a
 * tokenizer...). */
int engine_submit(Engine *e, const EngineRequest *r, uint64_t *id, Error *err);

/* Cancels a queued or running request: its cache is freed before the next step runs, and
 * on_done gets "cancelled" (from the next engine_step). Unknown or finished ids are
 * ignored. Safe from any thread, and from a callback. */
void engine_cancel(Engine *e, uint64_t id);

/* One step: ends cancelled requests, starts waiting ones that fit, runs one model_step over
 * all running requests (a prompt chunk each for those reading their prompt, decode tokens
 * first, within step_tokens), samples and calls on_token / on_done. Returns the number of
 * requests the step ran (0 when idle), or -1 with a message when the model failed (the
 * requests of that step then get on_done("error") and are dropped; the engine stays usable). */
int engine_step(Engine *e, Error *err);

/* Blocks until there is work for engine_step (a request queued, running or cancelled) or ms
 * milliseconds pass. */
void engine_wait(Engine *e, int ms);

/* Returns true while requests are queued or running. */
bool engine_busy(Engine *e);

typedef struct EngineStats {
    int queued, running;
    long kv_tokens_used, kv_tokens_total;     /* reserved by running requests / the budget */
    long steps, tokens_in, tokens_out;        /* steps run; prompt tokens run; tokens generated */
    int last_batch_seqs, last_batch_tokens;   /* the last step's requests and tokens */
} EngineStats;
void engine_stats(Engine *e, EngineStats *s);

#endif
