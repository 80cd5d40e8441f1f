/* cmd_serve.c — `llmint8 serve`: an OpenAI-compatible completions server.
 *
 * Startup: listen first (so /health can say "loading"), then load the model and start the
 * engine. Threads: libmicrohttpd's two (the connections, server_http.c), one engine worker
 * (engine_step in a loop), and this one, which waits for SIGTERM or SIGINT. On a signal:
 * stop accepting, let running requests finish for up to --grace seconds, cancel what is
 * left, close, exit 0. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "cli.h"
#include "commands.h"

#ifdef LLMINT8_HAVE_SERVE
#include "arch.h"
#include "engine.h"
#include "server_http.h"
#include "server_metrics.h"

static const char HELP[] =
    "Usage: llmint8 serve [MODEL_DIR] [options]\n"
    "Serves the model over HTTP with the OpenAI completions API (POST /v1/completions), plus\n"
    "GET /v1/models, /health, /metrics and POST /tokenize, /detokenize. Requests are batched\n"
    "continuously. MODEL_DIR defaults to " DEFAULT_MODEL_DIR ". docs/SERVER.md has examples.\n\n"
    "  --host ADDR              address to listen on (default 127.0.0.1)\n"
    "  --port N                 port (default 8000; 0: any free port)\n"
    "  --api-key KEY            require 'Authorization: Bearer KEY' (default: $LLMINT8_API_KEY)\n"
    "  --model-name NAME        the model's name in the API (default: MODEL_DIR's last part)\n"
    "  --parallel N             sequences in the running batch at once (default 16, at most 64)\n"
    "  --max-queue N            requests waiting beyond those; more get 503 (default 64)\n"
    "  --ctx N                  longest sequence, prompt + completion (default: the model's)\n"
    "  --kv-tokens N            KV cache budget in tokens, all sequences together (default 4 x ctx)\n"
    "  --prefill-chunk N        most prompt tokens a sequence runs per step (default 128)\n"
    "  --step-tokens N          most tokens per step, all sequences together (default 512)\n"
    "  --max-body BYTES         larger request bodies get 413 (default 1048576)\n"
    "  --timeout S              close connections idle for S seconds, and requests still\n"
    "                           arriving after S seconds (default 30)\n"
    "  --grace S                on SIGTERM/SIGINT, let running requests finish for S seconds (default 30)\n"
    "  --max-connections N      open connections at once (default 1024)\n"
    "  --quiet                  no log line per request\n"
    "Outliers default to --outliers per-token here, so that a request's result does not depend\n"
    "on what else runs in its batch.\n"
    "\n%s\n"
    "Examples:\n"
    "  llmint8 serve models/opt-gutenberg-7m --port 8000\n"
    "  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n"
    "       -d '{\"prompt\": \"It was a dark\", \"max_tokens\": 16, \"temperature\": 0}'\n";

enum {
    ARG_HOST = ARG_COMMAND_BASE, ARG_PORT, ARG_API_KEY, ARG_MODEL_NAME, ARG_PARALLEL, ARG_MAX_QUEUE, ARG_SERVE_CTX,
    ARG_KV_TOKENS, ARG_PREFILL, ARG_STEP_TOKENS, ARG_MAX_BODY, ARG_TIMEOUT, ARG_GRACE, ARG_MAX_CONN, ARG_QUIET,
};

typedef struct ServeOptions {
    ServerConfig http;
    long parallel, max_queue, ctx, kv_tokens, prefill, step_tokens, grace;
} ServeOptions;

static int parse_args(int argc, char **argv, CommonOptions *co, ServeOptions *so) {
    static const struct option longopts[] = {
        CLI_COMMON_OPTIONS,
        {"host", required_argument, NULL, ARG_HOST},
        {"port", required_argument, NULL, ARG_PORT},
        {"api-key", required_argument, NULL, ARG_API_KEY},
        {"model-name", required_argument, NULL, ARG_MODEL_NAME},
        {"parallel", required_argument, NULL, ARG_PARALLEL},
        {"max-queue", required_argument, NULL, ARG_MAX_QUEUE},
        {"ctx", required_argument, NULL, ARG_SERVE_CTX},
        {"kv-tokens", required_argument, NULL, ARG_KV_TOKENS},
        {"prefill-chunk", required_argument, NULL, ARG_PREFILL},
        {"step-tokens", required_argument, NULL, ARG_STEP_TOKENS},
        {"max-body", required_argument, NULL, ARG_MAX_BODY},
        {"timeout", required_argument, NULL, ARG_TIMEOUT},
        {"grace", required_argument, NULL, ARG_GRACE},
        {"max-connections", required_argument, NULL, ARG_MAX_CONN},
        {"quiet", no_argument, NULL, ARG_QUIET},
        {NULL, 0, NULL, 0},
    };
    long l;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': printf(HELP, CLI_COMMON_HELP); exit(0);
        case ARG_HOST: so->http.host = optarg; break;
        case ARG_PORT:
            if (cli_int_option("serve", "--port", optarg, 0, 65535, &l)) return 2;
            so->http.port = (int)l;
            break;
        case ARG_API_KEY: so->http.api_key = optarg; break;
        case ARG_MODEL_NAME: so->http.model_name = optarg; break;
        case ARG_PARALLEL:
            if (cli_int_option("serve", "--parallel", optarg, 1, MODEL_LOGIT_ROWS, &so->parallel)) return 2;
            break;
        case ARG_MAX_QUEUE:
            if (cli_int_option("serve", "--max-queue", optarg, 1, 1000000, &so->max_queue)) return 2;
            break;
        case ARG_SERVE_CTX:
            if (cli_int_option("serve", "--ctx", optarg, 1, 1 << 20, &so->ctx)) return 2;
            break;
        case ARG_KV_TOKENS:
            if (cli_int_option("serve", "--kv-tokens", optarg, 1, 1 << 26, &so->kv_tokens)) return 2;
            break;
        case ARG_PREFILL:
            if (cli_int_option("serve", "--prefill-chunk", optarg, 1, 1 << 16, &so->prefill)) return 2;
            break;
        case ARG_STEP_TOKENS:
            if (cli_int_option("serve", "--step-tokens", optarg, 1, 1 << 16, &so->step_tokens)) return 2;
            break;
        case ARG_MAX_BODY:
            if (cli_int_option("serve", "--max-body", optarg, 1, 1L << 30, &l)) return 2;
            so->http.max_body = (size_t)l;
            break;
        case ARG_TIMEOUT:
            if (cli_int_option("serve", "--timeout", optarg, 1, 86400, &l)) return 2;
            so->http.idle_timeout_s = so->http.request_timeout_s = (int)l;
            break;
        case ARG_GRACE:
            if (cli_int_option("serve", "--grace", optarg, 0, 86400, &so->grace)) return 2;
            break;
        case ARG_MAX_CONN:
            if (cli_int_option("serve", "--max-connections", optarg, 1, 1000000, &l)) return 2;
            so->http.max_connections = (int)l;
            break;
        case ARG_QUIET: so->http.log_requests = false; break;
        default: {
            int r = cli_common_option(c, optarg, co);
            if (r < 0) return 2;
            if (r == 0) return cli_usage_error("serve", "unknown option");
        }
        }
    }
    if (optind < argc) co->model_dir = argv[optind++];
    if (optind < argc) return cli_usage_error("serve", "unexpected argument '%s'", argv[optind]);
    if (!co->model_dir) co->model_dir = DEFAULT_MODEL_DIR;
    if (!so->http.api_key) so->http.api_key = getenv("LLMINT8_API_KEY");
    if (so->step_tokens < so->parallel)
        return cli_usage_error("serve", "--step-tokens %ld is less than --parallel %ld", so->step_tokens, so->parallel);
    return 0;
}

/* The engine worker: steps while there is work, records each step's batch. */
typedef struct Worker {
    Engine *engine;
    Metrics *metrics;
    atomic_bool stop;
} Worker;

static void *worker_main(void *arg) {
    Worker *w = arg;
    while (!atomic_load(&w->stop)) {
        engine_wait(w->engine, 100);
        double t0 = cli_now();
        Error err = {{0}};
        int n = engine_step(w->engine, &err);
        if (n < 0) {
            cli_warn("serve: a step failed (its requests ended with an error): %s", err.msg);
        } else if (n > 0) {
            EngineStats st;
            engine_stats(w->engine, &st);
            metrics_step(w->metrics, st.last_batch_seqs, st.last_batch_tokens, cli_now() - t0);
        }
    }
    return NULL;
}

/* Waits for SIGINT/SIGTERM for up to ms milliseconds (ms < 0: forever); returns the signal or 0. */
static int wait_signal(const sigset_t *set, long ms) {
    if (ms < 0) {
        int sig = 0;
        return sigwait(set, &sig) == 0 ? sig : 0;
    }
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    int sig = sigtimedwait(set, NULL, &ts);
    return sig > 0 ? sig : 0;
}

int cmd_serve(int argc, char **argv) {
    CommonOptions co;
    cli_common_defaults(&co);
    co.quant.outliers = OUTLIERS_PER_TOKEN;   /* a request's result must not depend on its batch */
    ServeOptions so = {
        .http = {.host = "127.0.0.1", .port = 8000, .max_body = 1 << 20, .idle_timeout_s = 30, .request_timeout_s = 30,
                 .max_connections = 1024, .log_requests = true},
        .parallel = 16, .max_queue = 64, .prefill = 128, .step_tokens = 512, .grace = 30,
    };
    co.pipelined = true;                      /* the engine runs over a pipeline (docs/PIPELINE.md) */
    int rc = parse_args(argc, argv, &co, &so);
    if (rc) return rc;
    if (pipeline_mpi_active() && pipeline_mpi_rank() > 0) {
        /* under mpirun, ranks > 0 serve their pipeline stage (and never come back): no HTTP */
        Session s;
        Error err = {{0}};
        cli_session_open(&co, true, true, &s, &err);
        return cli_fail(&err);
    }
    char name_buf[256];
    if (!so.http.model_name) {
        const char *d = co.model_dir;
        size_t n = strlen(d);
        while (n > 1 && d[n - 1] == '/') n--;
        size_t b = n;
        while (b > 0 && d[b - 1] != '/') b--;
        snprintf(name_buf, sizeof name_buf, "%.*s", (int)(n - b), d + b);
        so.http.model_name = name_buf;
    }

    /* Every thread started from here on inherits the blocked signals; this one waits for them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;   /* one descriptor per connection: allow as many as the hard limit */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    Error err = {{0}};
    Metrics *metrics = metrics_create();
    Server *srv = NULL;
    if (!metrics) return cli_fail(&(Error){.msg = "out of memory"});
    if (server_start(&so.http, metrics, &srv, &err)) {
        metrics_free(metrics);
        return cli_fail(&err);
    }
    fprintf(stderr, "llmint8 serve: listening on http://%s%s%s:%d\n", strchr(so.http.host, ':') ? "[" : "", so.http.host,
            strchr(so.http.host, ':') ? "]" : "", server_port(srv));

    Session s;
    Engine *engine = NULL;
    if (cli_session_open(&co, true, true, &s, &err)) {
        server_stop(srv);
        metrics_free(metrics);
        return cli_fail(&err);
    }
    const ModelConfig *cfg = checkpoint_config(s.ck);
    long native = arch_native_context(cfg);
    long ctx = so.ctx ? so.ctx : native;
    if (ctx > native) {
        err_set(&err, "--ctx %ld is beyond the model's %ld positions", ctx, native);
        goto fail;
    }
    long kv = so.kv_tokens ? so.kv_tokens : 4 * ctx;
    if (kv < ctx) kv = ctx;
    ModelOptions mo = {.ctx = (int)ctx, .cache_tokens = (int)kv, .batch_tokens = (int)so.step_tokens};
    if (cli_session_load_model(&s, &co, &mo, &err)) goto fail;
    EngineOptions eo = {.max_running = (int)so.parallel, .prefill_chunk = (int)so.prefill,
                        .step_tokens = (int)so.step_tokens, .max_queue = (int)so.max_queue};
    StepTarget target; /* the whole model, or a pipeline's stages */
    if (s.pipe) pipeline_step_target(s.pipe, &target);
    else model_step_target(s.model, &target);
    if (!(engine = engine_create_on(&target, s.tok, &eo, &err))) goto fail;

    Worker w = {.engine = engine, .metrics = metrics};
    pthread_t worker;
    if (pthread_create(&worker, NULL, worker_main, &w)) {
        err_set(&err, "cannot start the engine thread");
        goto fail;
    }
    server_set_ready(srv, engine, s.tok, cfg->vocab_size, (int)ctx);
    fprintf(stderr, "llmint8 serve: ready: %s (%s, %s), %ld positions, KV cache %ld tokens, %ld parallel, queue %ld\n",
            so.http.model_name, quant_mode_name(s.model->quant.mode), s.bk->name, ctx, kv, so.parallel, so.max_queue);

    int sig = wait_signal(&sigs, -1);
    fprintf(stderr, "llmint8 serve: %s: no new requests; finishing those running (at most %lds)\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", so.grace);
    server_drain(srv);
    double deadline = cli_now() + (double)so.grace;
    while (engine_busy(engine) && cli_now() < deadline)
        if (wait_signal(&sigs, 50)) break;   /* a second signal: stop waiting */
    if (engine_busy(engine)) cli_warn("serve: cancelling the requests still running");
    atomic_store(&w.stop, true);
    pthread_join(worker, NULL);
    server_detach_engine(srv);
    engine_free(engine);   /* what is left gets on_done("cancelled"), and its connection resumes */
    /* let the last responses reach their clients */
    double flush_deadline = cli_now() + 2;
    while (server_active_requests(srv) > 0 && cli_now() < flush_deadline) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    server_stop(srv);
    metrics_free(metrics);
    cli_session_close(&s);
    fprintf(stderr, "llmint8 serve: stopped\n");
    return 0;

fail:
    server_stop(srv);
    metrics_free(metrics);
    cli_session_close(&s);
    return cli_fail(&err);
}

#else /* built without libmicrohttpd */

int cmd_serve(int argc, char **argv) {
    (void)argc, (void)argv;
    fputs("llmint8: error: serve was not built: libmicrohttpd was not found at build time "
          "(install libmicrohttpd-dev and run meson setup again)\n", stderr);
    return 1;
}

#endif
