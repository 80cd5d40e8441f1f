/* cmd_generate.c — `llmint8 generate`: continue a prompt, streaming tokens as they come.
 *
 * One prefill call runs the whole prompt and fills the KV cache; then each new token is a
 * single-token forward pass that reads the cache. Text is printed through a TokenStream so
 * that a UTF-8 character split across tokens appears once it is complete. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "sampler.h"

static const char HELP[] =
    "Usage: llmint8 generate [MODEL_DIR] [-p TEXT | -f FILE | --ids FILE] [options]\n"
    "Continues the prompt and streams the text to stdout. Without -p/-f/--ids the prompt is read\n"
    "from stdin. MODEL_DIR defaults to " DEFAULT_MODEL_DIR ".\n\n"
    "  -p, --prompt TEXT        the prompt\n"
    "  -f, --file FILE          read the prompt from FILE\n"
    "      --ids FILE           the prompt as whitespace-separated token ids (used as given: no BOS added)\n"
    "  -n, --max-new N          tokens to generate (default 64)\n"
    "      --temperature T      sampling temperature (default 0.8; 0 = greedy)\n"
    "      --top-k K            keep the K most likely tokens (default 40; 0 = off)\n"
    "      --top-p P            keep the smallest set of tokens with probability mass P (default 0.95)\n"
    "      --repetition-penalty R  divide the logits of tokens already seen by R (default 1 = off)\n"
    "      --seed S             random seed (default: from the clock)\n"
    "      --greedy             always take the most likely token\n"
    "      --ignore-eos         keep going after the end-of-sequence token\n"
    "      --print-ids          print the new token ids (space-separated) instead of text\n"
    "      --truncate           drop the start of a prompt that is too long, instead of failing\n"
    "\n%s\n"
    "Examples:\n"
    "  llmint8 generate models/opt-gutenberg-7m -p \"It was a dark and stormy night\" -n 64\n"
    "  llmint8 generate MODEL_DIR -f prompt.txt --temperature 0.7 --top-p 0.9 --seed 1\n"
    "  echo \"The old man\" | llmint8 generate --greedy --precision fp16\n";

enum {
    ARG_TEMPERATURE = ARG_COMMAND_BASE, ARG_TOP_K, ARG_TOP_P, ARG_REP_PENALTY, ARG_SEED,
    ARG_GREEDY, ARG_IGNORE_EOS, ARG_PRINT_IDS, ARG_TRUNCATE,
};

typedef struct GenerateOptions {
    const char *prompt, *prompt_file, *ids_file;
    long max_new;
    SamplerConfig sampling;
    bool seed_given, ignore_eos, print_ids, truncate;
} GenerateOptions;

static int parse_args(int argc, char **argv, CommonOptions *co, GenerateOptions *go) {
    static const struct option longopts[] = {
        CLI_COMMON_OPTIONS,
        {"prompt", required_argument, NULL, 'p'},
        {"file", required_argument, NULL, 'f'},
        {"max-new", required_argument, NULL, 'n'},
        {"ids", required_argument, NULL, ARG_IDS},
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
    if (!!go->prompt + !!go->prompt_file + !!go->ids_file > 1)
        return cli_usage_error("generate", "give only one of -p, -f and --ids");
    if (!go->seed_given) go->sampling.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
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
    if (tokenizer_encode(s->tok, text, len, true, ids, n, err)) {
        free(text);
        return -1;
    }
    if (*n == 0) {
        free(text);
        free(*ids);
        return err_set(err, "the prompt is empty and this model has no BOS token to start from");
    }
    *text_out = text;
    return 0;
}

/* Prints one new token and flushes it; returns 0, or -1 if the write failed (see cli_flush_stdout). */
static int print_token(TokenStream *ts, char *buf, size_t cap, int32_t id, bool print_ids, bool first) {
    if (print_ids) {
        printf(first ? "%d" : " %d", id);
    } else {
        size_t k = token_stream_push(ts, id, buf, cap);
        fwrite(buf, 1, k, stdout);
    }
    return cli_flush_stdout();
}

int cmd_generate(int argc, char **argv) {
    CommonOptions co;
    GenerateOptions go = {0};
    cli_common_defaults(&co);
    co.pipelined = true; /* runs through cli_forward_last */
    int rc = parse_args(argc, argv, &co, &go);
    if (rc) return rc;

    Error err;
    Session s;
    bool need_tok = !(go.ids_file && go.print_ids);
    if (cli_session_open(&co, need_tok, !need_tok, &s, &err)) return cli_fail(&err);
    const ModelConfig *cfg = checkpoint_config(s.ck);

    int32_t *ids = NULL;
    size_t n_prompt = 0;
    char *prompt_text = NULL;
    if (read_prompt(&go, &s, cfg->vocab_size, &ids, &n_prompt, &prompt_text, &err)) {
        cli_session_close(&s);
        return cli_fail(&err);
    }

    /* Fit prompt + new tokens into the model's positions. */
    long native = arch_native_context(cfg);
    if ((long)n_prompt >= native) {
        if (!go.truncate) {
            err_set(&err, "the prompt has %zu tokens but the model has %ld positions (use --truncate to keep its end)",
                    n_prompt, native);
            goto fail;
        }
        long keep = native - (go.max_new < native / 2 ? go.max_new : native / 2);
        if (keep < 1) keep = 1;
        cli_warn("prompt truncated from %zu to its last %ld tokens", n_prompt, keep);
        memmove(ids, ids + n_prompt - (size_t)keep, (size_t)keep * sizeof *ids);
        n_prompt = (size_t)keep;
        free(prompt_text);
        prompt_text = NULL;
    }
    long total = (long)n_prompt + go.max_new;
    if (total > native) {
        cli_note("note: stopping after %ld new tokens, at the model's %ld positions", native - (long)n_prompt, native);
        total = native;
    }
    ModelOptions mo = {.ctx = (int)total, .batch_tokens = 512};
    if (cli_session_load_model(&s, &co, &mo, &err)) goto fail;

    int vocab = cfg->vocab_size;
    int32_t *history = realloc(ids, (size_t)total * sizeof *ids);
    size_t buf_cap = s.tok ? 4 * tokenizer_max_token_bytes(s.tok) + 64 : 64;
    char *buf = malloc(buf_cap);
    Sampler sampler = {0};
    if (!history || !buf || sampler_init(&sampler, &go.sampling, vocab)) {
        if (history) ids = history;
        free(buf);
        err_set(&err, "out of memory");
        goto fail;
    }
    ids = history;

    TokenStream ts;
    if (s.tok) token_stream_init(&ts, s.tok);
    if (!go.print_ids) {
        /* Echo the prompt, then the continuation streams after it. */
        if (prompt_text) fputs(prompt_text, stdout);
        else if (s.tok) {
            char *t = tokenizer_decode(s.tok, ids + (tokenizer_uses_bos(s.tok) && ids[0] == tokenizer_bos_id(s.tok)),
                                       n_prompt - (tokenizer_uses_bos(s.tok) && ids[0] == tokenizer_bos_id(s.tok)));
            if (t) fputs(t, stdout);
            free(t);
        }
    }
    /* A failed write stops the run (main reports it when the program ends). */
    bool out_failed = cli_flush_stdout() != 0;

    int32_t eos = cfg->eos_id >= 0 ? cfg->eos_id : (s.tok ? tokenizer_eos_id(s.tok) : -1);
    double t0 = cli_now();
    /* The logits stay in backend memory: the sampler brings back the chosen id only. */
    Backend *logits_bk = s.bk; /* where the logits are: the last stage's backend in a pipeline */
    float *logits = out_failed ? NULL : cli_forward_last(&s, ids, (int)n_prompt, &logits_bk, &err);
    rc = (out_failed || logits) ? 0 : -1;
    double t_prompt = cli_now() - t0, t_decode = 0;
    size_t n = n_prompt;
    int decode_steps = 0;
    while (rc == 0 && !out_failed && (long)n < total) {
        int32_t next = sampler_pick(&sampler, logits_bk, logits, ids, n);
        if (next < 0) {
            rc = err_set(&err, "the logits for the token at position %zu (counting from 0; the %s token) hold a NaN "
                         "or an infinity: the forward pass overflowed, or the weights are not finite; no token was "
                         "chosen from them", n, n == n_prompt ? "first new" : "next");
            break;
        }
        ids[n++] = next;
        if (next == eos && !go.ignore_eos) break;
        if ((out_failed = print_token(&ts, buf, buf_cap, next, go.print_ids, n == n_prompt + 1) != 0)) break;
        if ((long)n == total) break;
        double t1 = cli_now();
        logits = cli_forward_last(&s, &next, 1, &logits_bk, &err);
        rc = logits ? 0 : -1;
        t_decode += cli_now() - t1;
        decode_steps++;
    }
    if (!out_failed) { /* else the output is cut short, and the speed means nothing */
        if (!go.print_ids && s.tok) { /* what is held back of a split character */
            size_t k = token_stream_flush(&ts, buf, buf_cap);
            fwrite(buf, 1, k, stdout);
        }
        printf("\n");
        fflush(stdout);
        fprintf(stderr, "llmint8: prompt %zu tokens, %.1f tokens/s; generated %zu tokens, %.1f tokens/s (%s, %s)\n",
                n_prompt, (double)n_prompt / (t_prompt > 0 ? t_prompt : 1e-9), n - n_prompt,
                decode_steps ? decode_steps / (t_decode > 0 ? t_decode : 1e-9) : 0.0,
                quant_mode_name(s.model->quant.mode), s.bk->name);
    }
    sampler_free(&sampler);
    free(buf), free(ids), free(prompt_text);
    cli_session_close(&s);
    return rc ? cli_fail(&err) : 0;

fail:
    free(ids), free(prompt_text);
    cli_session_close(&s);
    return cli_fail(&err);
}
