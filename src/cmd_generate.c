/* cmd_generate.c — `llmint8 generate`: continue a prompt, streaming tokens as they come, or
 * many prompts at once (--prompts FILE), one JSON line each.
 *
 * Both run through the engine (engine.h): one prompt is one request of an engine that runs
 * one at a time (its prompt in one piece, then a token per step, as before); --prompts
 * submits every prompt to an engine that runs --parallel of them per step. A request's
 * tokens are the same either way with fp16 or --outliers per-token (docs/ENGINE.md). Text
 * is streamed as the engine releases it: a UTF-8 character split across tokens, or what
 * may be the start of a --stop string, appears once it is resolved. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "engine.h"
#include "json_in.h"
#include "json_out.h"
#include "sampler.h"

static const char HELP[] =
    "Usage: llmint8 generate [MODEL_DIR] [-p TEXT | -f FILE | --ids FILE | --prompts FILE] [options]\n"
    "Continues the prompt and streams the text to stdout. Without -p/-f/--ids/--prompts the prompt is\n"
    "read from stdin. MODEL_DIR defaults to " DEFAULT_MODEL_DIR ".\n\n"
    "  -p, --prompt TEXT        the prompt\n"
    "  -f, --file FILE          read the prompt from FILE\n"
    "      --ids FILE           the prompt as whitespace-separated token ids (used as given: no BOS added)\n"
    "      --prompts FILE       many prompts: one per line, or JSON Lines with a \"prompt\" field (and\n"
    "                           optional \"seed\" and \"max_tokens\"); prints one JSON line per prompt,\n"
    "                           in input order: ids, text, finish_reason, prompt_tokens, completion_tokens\n"
    "      --parallel N         with --prompts: prompts run at once, in one batch (default 4, at most 64)\n"
    "      --prefill-chunk N    most prompt tokens a prompt runs per step (default: 128 with --prompts,\n"
    "                           the whole prompt without)\n"
    "  -n, --max-new N          tokens to generate (default 64)\n"
    "      --stop STR           end the output before the first occurrence of STR (repeatable, up to 16)\n"
    "      --temperature T      sampling temperature (default 0.8; 0 = greedy)\n"
    "      --top-k K            keep the K most likely tokens (default 40; 0 = off)\n"
    "      --top-p P            keep the smallest set of tokens with probability mass P (default 0.95)\n"
    "      --repetition-penalty R  divide the logits of tokens already seen by R (default 1 = off)\n"
    "      --seed S             random seed (default: from the clock); with --prompts every line's, unless\n"
    "                           its JSON gives a \"seed\" (without either, line i gets clock + i)\n"
    "      --greedy             always take the most likely token\n"
    "      --ignore-eos         keep going after the end-of-sequence token\n"
    "      --print-ids          print the new token ids (space-separated) instead of text\n"
    "      --truncate           drop the start of a prompt that is too long, instead of failing\n"
    "\n%s\n"
    "Examples:\n"
    "  llmint8 generate models/opt-gutenberg-7m -p \"It was a dark and stormy night\" -n 64\n"
    "  llmint8 generate MODEL_DIR -f prompt.txt --temperature 0.7 --top-p 0.9 --seed 1\n"
    "  echo \"The old man\" | llmint8 generate --greedy --precision fp16\n"
    "  llmint8 generate MODEL_DIR --prompts prompts.jsonl --parallel 8 --outliers per-token --seed 1\n";

enum {
    ARG_TEMPERATURE = ARG_COMMAND_BASE, ARG_TOP_K, ARG_TOP_P, ARG_REP_PENALTY, ARG_SEED,
    ARG_GREEDY, ARG_IGNORE_EOS, ARG_PRINT_IDS, ARG_TRUNCATE, ARG_PROMPTS, ARG_PARALLEL, ARG_PREFILL_CHUNK,
    ARG_STOP,
};

enum { MAX_STOPS = 16 };

typedef struct GenerateOptions {
    const char *prompt, *prompt_file, *ids_file, *prompts_file;
    long max_new;
    SamplerConfig sampling;
    bool seed_given, ignore_eos, print_ids, truncate;
    int parallel, prefill_chunk;
    const char *stop[MAX_STOPS];
    int n_stop;
} GenerateOptions;

static int parse_args(int argc, char **argv, CommonOptions *co, GenerateOptions *go) {
    static const struct option longopts[] = {
        CLI_COMMON_OPTIONS,
        {"prompt", required_argument, NULL, 'p'},
        {"file", required_argument, NULL, 'f'},
        {"max-new", required_argument, NULL, 'n'},
        {"ids", required_argument, NULL, ARG_IDS},
        {"prompts", required_argument, NULL, ARG_PROMPTS},
        {"parallel", required_argument, NULL, ARG_PARALLEL},
        {"prefill-chunk", required_argument, NULL, ARG_PREFILL_CHUNK},
        {"stop", required_argument, NULL, ARG_STOP},
        {"temperature", required_argument, NULL, ARG_TEMPERATURE},
        {"top-k", required_argument, NULL, ARG_TOP_K},
        {"top-p", required_argument, NULL, ARG_TOP_P},
        {"repetition-penalty", required_argument, NULL, ARG_REP_PENALTY},
        {"seed", required_argument, NULL, ARG_SEED},
        {"greedy", no_argument, NULL, ARG_GREEDY},
        {"ignore-eos", no_argument, NULL, ARG_IGNORE_EOS},
        {"print-ids", no_argument, NULL, ARG_PRINT_IDS},
        {"truncate", no_argument, NULL, ARG_TRUNCATE},
        {NULL, 0, NULL, 0},
    };
    go->max_new = 64;
    go->sampling = (SamplerConfig){.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .repetition_penalty = 1.0f};
    go->parallel = 4;
    bool parallel_given = false;
    int c;
    long l;
    double d;
    optind = 1;
    while ((c = getopt_long(argc, argv, "p:f:n:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': printf(HELP, CLI_COMMON_HELP); exit(0);
        case 'p': go->prompt = optarg; break;
        case 'f': go->prompt_file = optarg; break;
        case ARG_IDS: go->ids_file = optarg; break;
        case ARG_PROMPTS: go->prompts_file = optarg; break;
        case ARG_PARALLEL:
            if (cli_int_option("generate", "--parallel", optarg, 1, MODEL_LOGIT_ROWS, &l)) return 2;
            go->parallel = (int)l;
            parallel_given = true;
            break;
        case ARG_PREFILL_CHUNK:
            if (cli_int_option("generate", "--prefill-chunk", optarg, 1, 1 << 20, &l)) return 2;
            go->prefill_chunk = (int)l;
            break;
        case ARG_STOP:
            if (go->n_stop == MAX_STOPS) return cli_usage_error("generate", "at most %d --stop strings", MAX_STOPS);
            if (!*optarg || strlen(optarg) > 1024)
                return cli_usage_error("generate", "--stop: expected a string of 1 to 1024 bytes");
            go->stop[go->n_stop++] = optarg;
            break;
        case 'n':
            if (cli_int_option("generate", "-n", optarg, 0, 1000000, &l)) return 2;
            go->max_new = l;
            break;
        case ARG_TEMPERATURE:
            if (cli_parse_float(optarg, 0, 100, &d)) return cli_usage_error("generate", "--temperature '%s': expected a number from 0 to 100", optarg);
            go->sampling.temperature = (float)d;
            break;
        case ARG_TOP_K:
            if (cli_int_option("generate", "--top-k", optarg, 0, 1 << 30, &l)) return 2;
            go->sampling.top_k = (int)l;
            break;
        case ARG_TOP_P:
            if (cli_parse_float(optarg, 0, 1, &d) || d == 0) return cli_usage_error("generate", "--top-p '%s': expected a number in (0, 1]", optarg);
            go->sampling.top_p = (float)d;
            break;
        case ARG_REP_PENALTY:
            if (cli_parse_float(optarg, 0, 100, &d) || d == 0) return cli_usage_error("generate", "--repetition-penalty '%s': expected a number in (0, 100]", optarg);
            go->sampling.repetition_penalty = (float)d;
            break;
        case ARG_SEED:
            if (cli_u64_option("generate", "--seed", optarg, &go->sampling.seed)) return 2;
            go->seed_given = true;
            break;
        case ARG_GREEDY: go->sampling.greedy = true; break;
        case ARG_IGNORE_EOS: go->ignore_eos = true; break;
        case ARG_PRINT_IDS: go->print_ids = true; break;
        case ARG_TRUNCATE: go->truncate = true; break;
        default: {
            int r = cli_common_option(c, optarg, co);
            if (r < 0) return 2;
            if (r == 0) return cli_usage_error("generate", "unknown option");
        }
        }
    }
    if (optind < argc) co->model_dir = argv[optind++];
    if (optind < argc) return cli_usage_error("generate", "unexpected argument '%s'", argv[optind]);
    if (!co->model_dir) co->model_dir = DEFAULT_MODEL_DIR;
    if (!!go->prompt + !!go->prompt_file + !!go->ids_file + !!go->prompts_file > 1)
        return cli_usage_error("generate", "give only one of -p, -f, --ids and --prompts");
    if (parallel_given && !go->prompts_file) return cli_usage_error("generate", "--parallel goes with --prompts");
    if (go->prompts_file && go->print_ids)
        return cli_usage_error("generate", "--print-ids does not go with --prompts (its JSON lines hold the ids)");
    if (go->n_stop && go->ids_file && go->print_ids)
        return cli_usage_error("generate", "--stop needs the text: not with --ids and --print-ids");
    if (!go->seed_given) go->sampling.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    return 0;
}

/* Encodes a prompt text (with BOS): -1 and a message for one that gives no tokens. */
static int encode_prompt(const Tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n, Error *err) {
    if (tokenizer_encode(tok, text, len, true, ids, n, err)) return -1;
    if (*n == 0) {
        free(*ids);
        *ids = NULL;
        return err_set(err, "the prompt is empty and this model has no BOS token to start from");
    }
    return 0;
}

/* The prompt as token ids, from -p, -f, stdin or --ids. */
static int read_prompt(const GenerateOptions *go, Session *s, int vocab, int32_t **ids, size_t *n,
                       char **text_out, Error *err) {
    *text_out = NULL;
    if (go->ids_file) return cli_read_ids(go->ids_file, vocab, ids, n, err);
    char *text;
    size_t len;
    if (go->prompt) {
        len = strlen(go->prompt);
        if (!(text = malloc(len + 1))) return err_set(err, "out of memory");
        memcpy(text, go->prompt, len + 1);
    } else {
        const char *path = go->prompt_file ? go->prompt_file : "-";
        if (!go->prompt_file && isatty(STDIN_FILENO))
            return err_set(err, "no prompt: give -p TEXT, -f FILE or --ids FILE, or pipe text to stdin");
        if (cli_read_file(path, &text, &len, err)) return -1;
    }
    if (encode_prompt(s->tok, text, len, ids, n, err)) {
        free(text);
        return -1;
    }
    *text_out = text;
    return 0;
}

/* Fits prompt + new tokens into the model's `native` positions: a prompt that leaves no room
 * fails, or with --truncate keeps its end; *max_new is cut to the positions left (told on
 * stderr when `tell`). Returns 0, 1 when the prompt was truncated, -1 with a message. */
static int fit_prompt(const GenerateOptions *go, long native, int32_t *ids, size_t *n_prompt, long *max_new,
                      bool tell, const char *what, Error *err) {
    int rc = 0;
    if ((long)*n_prompt >= native) {
        if (!go->truncate)
            return err_set(err, "%sthe prompt has %zu tokens but the model has %ld positions (use --truncate to keep "
                           "its end)", what, *n_prompt, native);
        long keep = native - (*max_new < native / 2 ? *max_new : native / 2);
        if (keep < 1) keep = 1;
        cli_warn("%sprompt truncated from %zu to its last %ld tokens", what, *n_prompt, keep);
        memmove(ids, ids + *n_prompt - (size_t)keep, (size_t)keep * sizeof *ids);
        *n_prompt = (size_t)keep;
        rc = 1;
    }
    if ((long)*n_prompt + *max_new > native) {
        if (tell)
            cli_note("note: %sstopping after %ld new tokens, at the model's %ld positions", what,
                     native - (long)*n_prompt, native);
        *max_new = native - (long)*n_prompt;
    }
    return rc;
}

static int32_t eos_of(const Session *s) {
    const ModelConfig *cfg = checkpoint_config(s->ck);
    return cfg->eos_id >= 0 ? cfg->eos_id : (s->tok ? tokenizer_eos_id(s->tok) : -1);
}

/* ---- one prompt, streamed ----------------------------------------------------------------- */

typedef struct Stream {
    bool print_ids, out_failed;
    int n_out;
    double t_first, t_last;     /* when the first and the last token came */
    Engine *e;
    uint64_t id;
    char reason[16];
    Error err;
    bool failed;
} Stream;

/* Prints a token (its id, or the text it releases) and flushes; a failed write cancels. */
static void stream_token(void *ctx, const EngineToken *t) {
    Stream *st = ctx;
    if (st->out_failed) return;
    double now = cli_now();
    if (st->n_out++ == 0) st->t_first = now;
    st->t_last = now;
    if (st->print_ids) printf(st->n_out == 1 ? "%d" : " %d", t->id);
    else fwrite(t->text, 1, t->text_len, stdout);
    if (cli_flush_stdout()) {
        st->out_failed = true;
        engine_cancel(st->e, st->id);
    }
}

static void stream_done(void *ctx, const EngineDone *d) {
    Stream *st = ctx;
    snprintf(st->reason, sizeof st->reason, "%s", d->finish_reason);
    if (d->error) {
        err_set(&st->err, "%s", d->error);
        st->failed = true;
    }
    if (!st->out_failed && !st->print_ids) fwrite(d->text, 1, d->text_len, stdout);
}

/* One prompt through a pipeline of stages (pipeline.h, docs/PIPELINE.md): the engine runs
 * the whole model, so here each token is one forward call through the stages, sampled on the
 * backend that holds the logits, and printed as the engine's stream would print it. */
static int generate_pipelined(Session *s, const GenerateOptions *go, const int32_t *prompt, size_t n_prompt,
                              long max_new, Stream *st, Error *err) {
    size_t cap = s->tok ? 4 * tokenizer_max_token_bytes(s->tok) + 64 : 64;
    char *buf = malloc(cap);
    int32_t *ids = malloc((n_prompt + (size_t)max_new + 1) * sizeof *ids);
    Sampler sampler = {0};
    if (!buf || !ids || sampler_init(&sampler, &go->sampling, checkpoint_config(s->ck)->vocab_size)) {
        free(buf), free(ids);
        return err_set(err, "out of memory");
    }
    memcpy(ids, prompt, n_prompt * sizeof *ids);
    TokenStream ts;
    if (s->tok) token_stream_init(&ts, s->tok);
    const int32_t eos = eos_of(s);
    Backend *bk = s->bk;
    float *logits = cli_forward_last(s, ids, (int)n_prompt, &bk, err);
    int rc = logits ? 0 : -1;
    size_t n = n_prompt;
    while (rc == 0 && !st->out_failed && (long)(n - n_prompt) < max_new) {
        int32_t next = sampler_pick(&sampler, bk, logits, ids, n);
        if (next < 0) {
            rc = err_set(err, "the logits for the token at position %zu hold a NaN or an infinity: the forward pass "
                         "overflowed, or the weights are not finite; no token was chosen from them", n);
            break;
        }
        ids[n++] = next;
        if (next == eos && !go->ignore_eos) break;
        double now = cli_now();
        if (st->n_out++ == 0) st->t_first = now;
        st->t_last = now;
        if (go->print_ids) printf(st->n_out == 1 ? "%d" : " %d", next);
        else fwrite(buf, 1, token_stream_push(&ts, next, buf, cap), stdout);
        st->out_failed = cli_flush_stdout() != 0;
        if ((long)(n - n_prompt) == max_new) break;
        logits = cli_forward_last(s, &next, 1, &bk, err);
        rc = logits ? 0 : -1;
    }
    if (!st->out_failed && !go->print_ids && s->tok) fwrite(buf, 1, token_stream_flush(&ts, buf, cap), stdout);
    sampler_free(&sampler);
    free(buf), free(ids);
    return rc;
}

static int generate_one(const CommonOptions *co, const GenerateOptions *go) {
    Error err;
    Session s;
    bool need_tok = !(go->ids_file && go->print_ids);
    if (cli_session_open(co, need_tok, !need_tok, &s, &err)) return cli_fail(&err);
    const ModelConfig *cfg = checkpoint_config(s.ck);

    int32_t *ids = NULL;
    size_t n_prompt = 0;
    char *prompt_text = NULL;
    Engine *e = NULL;
    if (read_prompt(go, &s, cfg->vocab_size, &ids, &n_prompt, &prompt_text, &err)) goto fail;
    long max_new = go->max_new;
    int fit = fit_prompt(go, arch_native_context(cfg), ids, &n_prompt, &max_new, true, "", &err);
    if (fit < 0) goto fail;
    if (fit == 1) {
        free(prompt_text);
        prompt_text = NULL;
    }
    long total = (long)n_prompt + max_new;
    ModelOptions mo = {.ctx = (int)total, .batch_tokens = 512};
    if (cli_session_load_model(&s, co, &mo, &err)) goto fail;
    /* the prompt in one piece, as one forward call ran it before the engine */
    EngineOptions eo = {.max_running = 1, .prefill_chunk = go->prefill_chunk ? go->prefill_chunk : (int)n_prompt};
    if (!s.pipe && !(e = engine_create(s.model, s.tok, &eo, &err))) goto fail;

    if (!go->print_ids) {
        /* Echo the prompt, then the continuation streams after it. */
        if (prompt_text) fputs(prompt_text, stdout);
        else if (s.tok) {
            bool bos = tokenizer_uses_bos(s.tok) && ids[0] == tokenizer_bos_id(s.tok);
            char *t = tokenizer_decode(s.tok, ids + bos, n_prompt - bos);
            if (t) fputs(t, stdout);
            free(t);
        }
    }
    Stream st = {.print_ids = go->print_ids, .e = e};
    /* A failed write stops the run (main reports it when the program ends). */
    st.out_failed = cli_flush_stdout() != 0;
    EngineRequest r = {.prompt = ids, .n_prompt = (int)n_prompt, .max_tokens = (int)max_new,
                       .sampling = go->sampling, .eos_id = eos_of(&s), .ignore_eos = go->ignore_eos,
                       .stop = go->stop, .n_stop = go->n_stop, .on_token = stream_token, .on_done = stream_done,
                       .ctx = &st};
    double t0 = cli_now();
    int rc = 0;
    if (s.pipe) {
        rc = generate_pipelined(&s, go, ids, n_prompt, max_new, &st, &err);
    } else {
        if (!st.out_failed && engine_submit(e, &r, &st.id, &err) != ENGINE_OK) goto fail;
        while (rc == 0 && engine_busy(e)) rc = engine_step(e, &err) < 0 ? -1 : 0;
    }
    if (rc == 0 && st.failed) {
        err = st.err;
        rc = -1;
    }
    if (!st.out_failed) { /* else the output is cut short, and the speed means nothing */
        printf("\n");
        fflush(stdout);
        double t_prompt = st.n_out ? st.t_first - t0 : cli_now() - t0, t_decode = st.t_last - st.t_first;
        fprintf(stderr, "llmint8: prompt %zu tokens, %.1f tokens/s; generated %d tokens, %.1f tokens/s (%s, %s)\n",
                n_prompt, (double)n_prompt / (t_prompt > 0 ? t_prompt : 1e-9), st.n_out,
                st.n_out > 1 ? (st.n_out - 1) / (t_decode > 0 ? t_decode : 1e-9) : 0.0,
                quant_mode_name(s.model->quant.mode), s.bk->name);
    }
    engine_free(e);
    free(ids), free(prompt_text);
    cli_session_close(&s);
    return rc ? cli_fail(&err) : 0;

fail:
    engine_free(e);
    free(ids), free(prompt_text);
    cli_session_close(&s);
    return cli_fail(&err);
}

/* ---- many prompts: --prompts FILE ---------------------------------------------------------- */

typedef struct Job {
    int line;                   /* 1-based line of the file */
    int32_t *ids;               /* the prompt, then (from on_token) the generated ids */
    int n_prompt, n_gen;
    long max_new;
    uint64_t seed;
    char *text;                 /* generated text */
    size_t text_len, text_cap;
    bool done, failed;
    char reason[16];
    char *error;
    int prompt_tokens, completion_tokens;
} Job;

static int job_text(Job *j, const char *s, size_t n) {
    if (j->text_len + n + 1 > j->text_cap) {
        size_t cap = 2 * (j->text_len + n) + 64;
        char *t = realloc(j->text, cap);
        if (!t) return -1;
        j->text = t, j->text_cap = cap;
    }
    memcpy(j->text + j->text_len, s, n);
    j->text_len += n;
    j->text[j->text_len] = 0;
    return 0;
}

static void job_token(void *ctx, const EngineToken *t) {
    Job *j = ctx;
    j->ids[j->n_prompt + j->n_gen++] = t->id;
    if (job_text(j, t->text, t->text_len)) j->failed = true;
}

static void job_done(void *ctx, const EngineDone *d) {
    Job *j = ctx;
    j->done = true;
    snprintf(j->reason, sizeof j->reason, "%s", d->finish_reason);
    j->prompt_tokens = d->prompt_tokens, j->completion_tokens = d->completion_tokens;
    if (job_text(j, d->text, d->text_len)) j->failed = true;
    if (d->error && !(j->error = strdup(d->error))) j->failed = true;
}

static void jobs_free(Job *jobs, int n) {
    for (int i = 0; jobs && i < n; i++) free(jobs[i].ids), free(jobs[i].text), free(jobs[i].error);
    free(jobs);
}

/* One line of a JSON Lines file: its prompt (encoded into j) and optional seed and max_tokens. */
static int parse_json_line(const Tokenizer *tok, const char *src, const char *line, size_t len, Job *j,
                           Error *err) {
    cJSON *o = json_parse(src, line, len, err);
    if (!o) return -1;
    int rc = -1;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(o, "seed");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "max_tokens");
    if (!cJSON_IsObject(o) || !cJSON_IsString(p)) err_set(err, "%s: expected an object with a \"prompt\" string", src);
    else if (seed && !(cJSON_IsNumber(seed) && seed->valuedouble >= 0 && seed->valuedouble <= 9007199254740992.0 &&
                       seed->valuedouble == (double)(uint64_t)seed->valuedouble))
        err_set(err, "%s: \"seed\": expected a whole number from 0 to 2^53", src);
    else if (mt && !(cJSON_IsNumber(mt) && mt->valuedouble >= 0 && mt->valuedouble <= 1000000 &&
                     mt->valuedouble == (double)(long)mt->valuedouble))
        err_set(err, "%s: \"max_tokens\": expected a whole number from 0 to 1000000", src);
    else {
        size_t n;
        if (seed) j->seed = (uint64_t)seed->valuedouble;
        if (mt) j->max_new = (long)mt->valuedouble;
        if (encode_prompt(tok, p->valuestring, strlen(p->valuestring), &j->ids, &n, err) == 0) {
            j->n_prompt = (int)n;
            rc = 0;
        } else {
            err_prefix(err, "%s", src);
        }
    }
    cJSON_Delete(o);
    return rc;
}

/* Reads --prompts FILE into jobs: plain lines, or JSON Lines when the first line that is not
 * blank starts with '{'. Blank lines are skipped. */
static int read_jobs(const GenerateOptions *go, const Session *s, Job **out, int *n_out, Error *err) {
    char *data;
    size_t len;
    if (cli_read_file(go->prompts_file, &data, &len, err)) return -1;
    const char *p = data, *end = data + len;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    bool jsonl = p < end && *p == '{';
    Job *jobs = NULL;
    int n = 0, cap = 0, line = 0;
    for (const char *l = data; l < end;) {
        const char *nl = memchr(l, '\n', (size_t)(end - l));
        const char *le = nl ? nl : end;
        size_t ll = (size_t)(le - l);
        if (ll && l[ll - 1] == '\r') ll--;
        line++;
        bool blank = true;
        for (size_t i = 0; i < ll && blank; i++) blank = l[i] == ' ' || l[i] == '\t';
        if (!blank) {
            if (n == cap) {
                Job *t = realloc(jobs, (size_t)(cap = 2 * cap + 16) * sizeof *t);
                if (!t) goto oom;
                jobs = t;
            }
            Job *j = &jobs[n];
            memset(j, 0, sizeof *j);
            j->line = line, j->max_new = go->max_new;
            j->seed = go->sampling.seed + (go->seed_given ? 0 : (uint64_t)n);
            n++;
            char src[4200];
            snprintf(src, sizeof src, "%s line %d", go->prompts_file, line);
            size_t np;
            if (jsonl ? parse_json_line(s->tok, src, l, ll, j, err)
                      : (encode_prompt(s->tok, l, ll, &j->ids, &np, err) ? err_prefix(err, "%s", src) : 0)) {
                jobs_free(jobs, n);
                free(data);
                return -1;
            }
            if (!jsonl) j->n_prompt = (int)np;
        }
        l = nl ? nl + 1 : end;
    }
    free(data);
    if (n == 0) {
        free(jobs);
        return err_set(err, "%s holds no prompts", go->prompts_file);
    }
    *out = jobs, *n_out = n;
    return 0;
oom:
    jobs_free(jobs, n);
    free(data);
    return err_set(err, "out of memory");
}

/* The JSON line of a finished job. */
static int print_job(const Job *j, int index, Error *err) {
    JsonOut o;
    json_out_begin(&o);
    json_add_int(&o, o.root, "index", index);
    json_add_int(&o, o.root, "line", j->line);
    json_add_uint(&o, o.root, "seed", j->seed);
    json_add_int(&o, o.root, "prompt_tokens", j->prompt_tokens);
    json_add_int(&o, o.root, "completion_tokens", j->completion_tokens);
    json_add_string(&o, o.root, "finish_reason", j->reason);
    if (j->error) json_add_string(&o, o.root, "error", j->error);
    cJSON *a = json_add_array(&o, o.root, "ids");
    for (int i = 0; i < j->n_gen; i++) json_append_int(&o, a, j->ids[j->n_prompt + i]);
    json_add_string(&o, o.root, "text", j->text ? j->text : "");
    return json_out_print(&o, stdout, false, err);
}

static int generate_many(const CommonOptions *co, const GenerateOptions *go) {
    Error err;
    Session s;
    if (cli_session_open(co, true, true, &s, &err)) return cli_fail(&err);
    const ModelConfig *cfg = checkpoint_config(s.ck);
    Job *jobs = NULL;
    int n = 0;
    Engine *e = NULL;
    if (read_jobs(go, &s, &jobs, &n, &err)) goto fail;

    /* Each prompt as `generate` would fit it alone; the context is the longest of them. */
    long native = arch_native_context(cfg), ctx = 1;
    long prompt_tokens = 0;
    for (int i = 0; i < n; i++) {
        Job *j = &jobs[i];
        char what[64];
        snprintf(what, sizeof what, "line %d: ", j->line);
        size_t np = (size_t)j->n_prompt;
        if (fit_prompt(go, native, j->ids, &np, &j->max_new, false, what, &err) < 0) goto fail;
        j->n_prompt = (int)np;
        int32_t *grown = realloc(j->ids, (size_t)(np + (size_t)j->max_new + 1) * sizeof *grown);
        if (!grown) {
            err_set(&err, "out of memory");
            goto fail;
        }
        j->ids = grown;
        if ((long)np + j->max_new > ctx) ctx = (long)np + j->max_new;
        prompt_tokens += (long)np;
    }
    int parallel = go->parallel < n ? go->parallel : n;
    ModelOptions mo = {.ctx = (int)ctx, .batch_tokens = 512, .cache_tokens = (int)(parallel * ctx)};
    if (cli_session_load_model(&s, co, &mo, &err)) goto fail;
    EngineOptions eo = {.max_running = parallel, .prefill_chunk = go->prefill_chunk ? go->prefill_chunk : 128};
    StepTarget target; /* the whole model, or a pipeline's stages (pipeline.h) */
    if (s.pipe) pipeline_step_target(s.pipe, &target);
    else model_step_target(s.model, &target);
    if (!(e = engine_create_on(&target, s.tok, &eo, &err))) goto fail;
    for (int i = 0; i < n; i++) {
        Job *j = &jobs[i];
        SamplerConfig sc = go->sampling;
        sc.seed = j->seed;
        EngineRequest r = {.prompt = j->ids, .n_prompt = j->n_prompt, .max_tokens = (int)j->max_new, .sampling = sc,
                           .eos_id = eos_of(&s), .ignore_eos = go->ignore_eos, .stop = go->stop,
                           .n_stop = go->n_stop, .on_token = job_token, .on_done = job_done, .ctx = j};
        uint64_t id;
        if (engine_submit(e, &r, &id, &err) != ENGINE_OK) {
            err_prefix(&err, "%s line %d", go->prompts_file, j->line);
            goto fail;
        }
    }
    /* Step until every prompt is done, printing each line as soon as those before it are. */
    double t0 = cli_now();
    int printed = 0, rc = 0, failed = 0;
    while (rc == 0 && printed < n) {
        if (engine_step(e, &err) < 0) rc = -1;
        for (; printed < n && jobs[printed].done; printed++) {
            if (jobs[printed].failed) {
                rc = err_set(&err, "out of memory");
                break;
            }
            failed += jobs[printed].error != NULL;
            if (print_job(&jobs[printed], printed, &err) || cli_flush_stdout()) {
                rc = -1;
                break;
            }
        }
    }
    if (rc == 0) {
        EngineStats es;
        engine_stats(e, &es);
        double t = cli_now() - t0;
        fprintf(stderr, "llmint8: %d prompts (%ld tokens), generated %ld tokens in %.2f s: %.1f tokens/s, "
                "%ld steps, %d at once (%s, %s)\n", n, prompt_tokens, es.tokens_out, t,
                (double)es.tokens_out / (t > 0 ? t : 1e-9), es.steps, parallel, quant_mode_name(s.model->quant.mode),
                s.bk->name);
        if (failed) rc = err_set(&err, "%d of the %d prompts failed (see their \"error\")", failed, n);
    }
    engine_free(e);
    jobs_free(jobs, n);
    cli_session_close(&s);
    return rc ? cli_fail(&err) : 0;

fail:
    engine_free(e);
    jobs_free(jobs, n);
    cli_session_close(&s);
    return cli_fail(&err);
}

int cmd_generate(int argc, char **argv) {
    CommonOptions co;
    GenerateOptions go = {0};
    cli_common_defaults(&co);
    co.pipelined = true; /* one prompt may run through a pipeline (generate_pipelined) */
    int rc = parse_args(argc, argv, &co, &go);
    if (rc) return rc;
    if (!go.prompts_file && go.n_stop && (strchr(co.device, ',') || pipeline_mpi_size() > 1))
        return cli_usage_error("generate", "--stop with one prompt runs on the engine of one process: not in a "
                               "pipeline (a device list or mpirun); --prompts runs the engine over a pipeline");
    return go.prompts_file ? generate_many(&co, &go) : generate_one(&co, &go);
}
