/* server_metrics.c — counters and fixed-bucket histograms in Prometheus text (server_metrics.h). */
#include "server_metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BUCKETS 16

typedef struct Histogram {
    const char *name, *help;
    int n;                          /* buckets, each an upper bound; +Inf is implied */
    double le[MAX_BUCKETS];
    unsigned long count[MAX_BUCKETS + 1];
    unsigned long total;
    double sum;
} Histogram;

/* HTTP statuses the server answers with; anything else is counted under "other". */
static const int STATUSES[] = {200, 400, 401, 404, 405, 408, 413, 500, 503};
#define N_STATUSES (int)(sizeof STATUSES / sizeof STATUSES[0])

struct Metrics {
    pthread_mutex_t mu;
    unsigned long requests[N_STATUSES + 1];
    Histogram request_s, ttft_s, token_s, step_s, batch_seqs, batch_tokens;
};

static void hist_init(Histogram *h, const char *name, const char *help, int n, const double *le) {
    h->name = name;
    h->help = help;
    h->n = n;
    memcpy(h->le, le, (size_t)n * sizeof *le);
}

static void hist_observe(Histogram *h, double v) {
    int i = 0;
    while (i < h->n && v > h->le[i]) i++;
    h->count[i]++;
    h->total++;
    h->sum += v;
}

Metrics *metrics_create(void) {
    Metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    static const double secs[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
    static const double counts[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048};
    hist_init(&m->request_s, "llmint8_request_duration_seconds", "HTTP request time, arrival to last byte queued", 14, secs);
    hist_init(&m->ttft_s, "llmint8_time_to_first_token_seconds", "completion request arrival to its first token", 14, secs);
    hist_init(&m->token_s, "llmint8_time_per_output_token_seconds", "mean time between a completion's generated tokens", 14, secs);
    hist_init(&m->step_s, "llmint8_step_duration_seconds", "one engine step (one batched forward pass)", 14, secs);
    hist_init(&m->batch_seqs, "llmint8_batch_sequences", "sequences run per engine step", 12, counts);
    hist_init(&m->batch_tokens, "llmint8_batch_tokens", "tokens run per engine step", 12, counts);
    return m;
}

void metrics_free(Metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void metrics_request(Metrics *m, int status, double seconds) {
    int i = 0;
    while (i < N_STATUSES && STATUSES[i] != status) i++;
    pthread_mutex_lock(&m->mu);
    m->requests[i]++;
    hist_observe(&m->request_s, seconds);
    pthread_mutex_unlock(&m->mu);
}

void metrics_ttft(Metrics *m, double seconds) {
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->ttft_s, seconds);
    pthread_mutex_unlock(&m->mu);
}

void metrics_token_latency(Metrics *m, double seconds) {
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->token_s, seconds);
    pthread_mutex_unlock(&m->mu);
}

void metrics_step(Metrics *m, int seqs, int tokens, double seconds) {
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->batch_seqs, seqs);
    hist_observe(&m->batch_tokens, tokens);
    hist_observe(&m->step_s, seconds);
    pthread_mutex_unlock(&m->mu);
}

/* A growing text buffer; a failed allocation is remembered and the result is NULL. */
typedef struct Text { char *s; size_t len, cap; int failed; } Text;

__attribute__((format(printf, 2, 3))) static void put(Text *t, const char *fmt, ...) {
    if (t->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            t->failed = 1;
            return;
        }
        if (t->s && t->len + (size_t)k < t->cap) {
            t->len += (size_t)k;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while (cap < t->len + (size_t)k + 1) cap *= 2;
        char *p = realloc(t->s, cap);
        if (!p) {
            t->failed = 1;
            return;
        }
        t->s = p;
        t->cap = cap;
    }
}

static void put_hist(Text *t, const Histogram *h) {
    put(t, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
    unsigned long cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->count[i];
        put(t, "%s_bucket{le=\"%g\"} %lu\n", h->name, h->le[i], cum);
    }
    put(t, "%s_bucket{le=\"+Inf\"} %lu\n%s_sum %.9g\n%s_count %lu\n", h->name, h->total, h->name, h->sum, h->name,
        h->total);
}

static void put_gauge(Text *t, const char *name, const char *type, const char *help, double v) {
    put(t, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

char *metrics_render(Metrics *m, Engine *e) {
    Text t = {0};
    EngineStats s = {0};
    if (e) engine_stats(e, &s);
    pthread_mutex_lock(&m->mu);
    put(&t, "# HELP llmint8_requests_total HTTP requests answered, by status\n# TYPE llmint8_requests_total counter\n");
    for (int i = 0; i <= N_STATUSES; i++) {
        if (i < N_STATUSES) put(&t, "llmint8_requests_total{code=\"%d\"} %lu\n", STATUSES[i], m->requests[i]);
        else put(&t, "llmint8_requests_total{code=\"other\"} %lu\n", m->requests[i]);
    }
    put_hist(&t, &m->request_s);
    put_hist(&t, &m->ttft_s);
    put_hist(&t, &m->token_s);
    put_hist(&t, &m->step_s);
    put_hist(&t, &m->batch_seqs);
    put_hist(&t, &m->batch_tokens);
    pthread_mutex_unlock(&m->mu);
    put_gauge(&t, "llmint8_model_loaded", "gauge", "1 once the model is loaded and requests are served", e ? 1 : 0);
    put_gauge(&t, "llmint8_queue_depth", "gauge", "requests waiting for a place in the batch", s.queued);
    put_gauge(&t, "llmint8_running_sequences", "gauge", "sequences in the running batch", s.running);
    put_gauge(&t, "llmint8_kv_cache_tokens_used", "gauge", "KV cache tokens reserved by running sequences", (double)s.kv_tokens_used);
    put_gauge(&t, "llmint8_kv_cache_tokens_total", "gauge", "KV cache budget in tokens", (double)s.kv_tokens_total);
    put_gauge(&t, "llmint8_engine_steps_total", "counter", "engine steps run", (double)s.steps);
    put_gauge(&t, "llmint8_prompt_tokens_total", "counter", "prompt tokens run through the model", (double)s.tokens_in);
    put_gauge(&t, "llmint8_generation_tokens_total", "counter", "tokens generated", (double)s.tokens_out);
    if (t.failed) {
        free(t.s);
        return NULL;
    }
    return t.s;
}
