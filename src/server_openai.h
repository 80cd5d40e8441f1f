/* server_openai.h — the OpenAI completions API as data: request bodies in, response bodies out.
 *
 * Knows JSON and the API's field names; knows nothing of HTTP or threads. Parsing checks
 * every field the server uses (a wrong type or a value out of range is an ApiError with the
 * field's name, which becomes a 400); fields it does not know are ignored, as OpenAI does.
 * Building returns malloc'ed JSON text (NULL when out of memory); text from the model or a
 * client that is not valid UTF-8 is written with U+FFFD in its place, so every body is JSON. */
#ifndef LLMINT8_SERVER_OPENAI_H
#define LLMINT8_SERVER_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "sampler.h"
#include "tokenizer.h"

/* An error the client caused (or a refusal): HTTP status and OpenAI's error fields. */
typedef struct ApiError {
    int status;             /* 400, 401, 404, 413, 503 ... */
    const char *type;       /* "invalid_request_error", "authentication_error", "server_error" ... */
    const char *param;      /* the offending field, or NULL */
    char message[512];
} ApiError;

/* Fills e and returns -1. */
int api_error(ApiError *e, int status, const char *type, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* {"error":{"message","type","param","code"}} */
char *openai_error_json(const ApiError *e);

#define OPENAI_MAX_STOP 16
#define OPENAI_MAX_PROMPTS 64
#define OPENAI_MAX_LOGPROBS 20

/* A parsed POST /v1/completions body. */
typedef struct CompletionParams {
    int n_prompts;
    int32_t **prompts;          /* [n_prompts] token ids (a string prompt is tokenized with BOS) */
    int *n_prompt;              /* [n_prompts] */
    int max_tokens;             /* default 16 */
    SamplerConfig sampling;     /* temperature 0 -> greedy; seed from the request or the clock */
    char **stop; int n_stop;    /* copies */
    bool stream, echo, ignore_eos, include_usage;
    int logprobs;               /* 0: none (absent or null); 1..20 */
    bool logprobs_given;        /* "logprobs": 0 asks for the chosen token's logprob only */
} CompletionParams;

/* Parses and checks body[0..len). The seed, if not given, is default_seed. Returns 0, or -1
 * with e filled (status 400). */
int openai_parse_completion(const char *body, size_t len, const Tokenizer *tok, int vocab, uint64_t default_seed,
                            CompletionParams *p, ApiError *e);
void openai_completion_free(CompletionParams *p);

/* What one token left in a choice's logprobs. */
typedef struct TokenLog {
    int32_t id;
    double logprob;             /* NaN: none (the first prompt token) -> null */
    size_t text_offset;
    int n_top;
    int32_t top_ids[OPENAI_MAX_LOGPROBS];
    double top_logprobs[OPENAI_MAX_LOGPROBS];
} TokenLog;

/* One choice (one prompt) as the engine fills it. */
typedef struct Choice {
    char *text; size_t len, cap;
    TokenLog *logs; int n_logs, cap_logs;
    const char *finish_reason;  /* NULL until done */
    int prompt_tokens, completion_tokens;
} Choice;

/* Appends a token's text (and, with want_logs, its TokenLog with at most max_top alternatives).
 * Returns 0 or -1 (out of memory). */
int choice_add_token(Choice *c, const EngineToken *t, bool want_logs, int max_top);
void choice_free(Choice *c);

/* Everything a response names besides its choices. */
typedef struct ResponseMeta {
    const char *id;             /* "cmpl-..." */
    long created;               /* unix seconds */
    const char *model;
    const Tokenizer *tok;       /* for the tokens' strings in logprobs */
    bool logprobs;              /* write "logprobs" objects (else null) */
} ResponseMeta;

/* The whole non-streamed response: choices, usage. */
char *openai_completion_json(const ResponseMeta *m, const Choice *choices, int n);
/* One server-sent event's JSON for choice `index`: text[0..len) and logs[0..n_logs), and
 * finish_reason (NULL while running). */
char *openai_chunk_json(const ResponseMeta *m, int index, const char *text, size_t len, const TokenLog *logs,
                        int n_logs, const char *finish_reason);
/* The last streamed event's JSON when usage is asked for (stream_options.include_usage). */
char *openai_usage_chunk_json(const ResponseMeta *m, int prompt_tokens, int completion_tokens);

/* GET /v1/models. */
char *openai_models_json(const char *model, long created, int max_model_len);

/* POST /tokenize {"prompt": string, "add_special_tokens": bool} -> {"tokens":[...],"count":n,
 * "max_model_len":ctx}; POST /detokenize {"tokens":[ids]} -> {"prompt": text}. */
char *openai_tokenize(const char *body, size_t len, const Tokenizer *tok, int max_model_len, ApiError *e);
char *openai_detokenize(const char *body, size_t len, const Tokenizer *tok, int vocab, ApiError *e);

#endif
