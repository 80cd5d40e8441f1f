/* server_http.c — routes and libmicrohttpd glue (server_http.h).
 *
 * Three kinds of objects:
 *   Server  — the daemon, the engine once loaded, the list of open connections (Track);
 *   Conn    — one HTTP request (libmicrohttpd's per-request context): body, route, status;
 *   Req     — one completion request as the engine sees it, shared between the HTTP thread
 *             and the engine's thread, freed when the last of them lets go (refs).
 * Lock order: Server.engine_lock, then the engine's own lock; a Req's lock is taken alone,
 * or inside libmicrohttpd's callbacks, and libmicrohttpd's suspend/resume are called with it
 * held, so a wake-up is never lost. */
#include "server_http.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <microhttpd.h>

#include "server_openai.h"

/* One open connection, for the janitor that closes requests taking too long to arrive
 * (a client sending a byte a second keeps the idle timeout from firing). */
typedef struct Track {
    struct Track *prev, *next;
    int fd;
    bool reading;               /* a request is being received (not yet handled) */
    double since;               /* when this request began (or the connection opened) */
} Track;

struct Server {
    ServerConfig cfg;
    char *api_key, *model_name;
    struct MHD_Daemon *daemon;
    int port;
    Metrics *metrics;

    pthread_rwlock_t engine_lock;   /* guards engine (writers: set_ready, detach) */
    Engine *engine;
    const Tokenizer *tok;
    int vocab, max_model_len;
    atomic_bool ready, draining;
    atomic_int active;              /* Conns holding a Req */
    atomic_uint_fast64_t next_id;
    long started;

    pthread_mutex_t track_mu;
    Track tracks;                   /* list head */
    pthread_t janitor;
    bool janitor_running;
    atomic_bool stopping;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- Req: a completion request in flight ----------------------------------------------- */

typedef struct Req Req;
typedef struct ReqChoice {
    Req *r;
    int index;
    uint64_t id;                /* the engine's id, 0 if not accepted */
    bool done;
} ReqChoice;

struct Req {
    pthread_mutex_t mu;
    int refs;                   /* the Conn, the stream response, each accepted engine request */
    Server *srv;
    struct MHD_Connection *conn;   /* NULL once the HTTP side is gone */
    bool suspended;
    CompletionParams p;
    ResponseMeta meta;
    char id[48];
    int n, n_done;
    Choice *choices;
    ReqChoice *rc;
    /* streaming: events not yet sent, and whether the last one ([DONE]) is in */
    char *out; size_t out_len, out_pos, out_cap;
    bool out_end, out_failed;
    /* outcome */
    bool any_error, any_cancelled;
    char error[256];
    double t_start, t_first, t_last;
    int prompt_tokens, completion_tokens;
};

static void req_free(Req *r) {
    for (int i = 0; i < r->n; i++) choice_free(&r->choices[i]);
    free(r->choices);
    free(r->rc);
    free(r->out);
    openai_completion_free(&r->p);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Drops one reference (the caller does not hold r->mu). */
static void req_release(Req *r) {
    pthread_mutex_lock(&r->mu);
    bool last = --r->refs == 0;
    pthread_mutex_unlock(&r->mu);
    if (last) req_free(r);
}

/* With r->mu held: lets the connection run again if it waits for us. */
static void req_wake(Req *r) {
    if (r->suspended && r->conn) {
        r->suspended = false;
        MHD_resume_connection(r->conn);
    }
}

/* With r->mu held: appends "data: JSON\n\n" (json is freed; NULL marks the stream failed). */
static void req_event(Req *r, char *json) {
    if (!json) {
        r->out_failed = true;
        return;
    }
    size_t k = strlen(json), need = r->out_len + k + 8;
    if (need > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : 1024;
        while (cap < need) cap *= 2;
        char *p = realloc(r->out, cap);
        if (!p) {
            r->out_failed = true;
            free(json);
            return;
        }
        r->out = p;
        r->out_cap = cap;
    }
    r->out_len += (size_t)sprintf(r->out + r->out_len, "data: %s\n\n", json);
    free(json);
}

static bool wants_logs(const Req *r) { return r->p.logprobs_given; }

static void on_token(void *ctx, const EngineToken *t) {
    ReqChoice *c = ctx;
    Req *r = c->r;
    double now = now_s();
    pthread_mutex_lock(&r->mu);
    if (!t->prompt) {
        if (r->t_first == 0) r->t_first = now;
        r->t_last = now;
    }
    if (r->p.stream) {
        if (t->text_len || wants_logs(r)) {
            Choice one = {0};
            if (choice_add_token(&one, t, wants_logs(r), r->p.logprobs) == 0)
                req_event(r, openai_chunk_json(&r->meta, c->index, one.text, one.len, one.logs, one.n_logs, NULL));
            else r->out_failed = true;
            choice_free(&one);
            req_wake(r);
        }
    } else if (choice_add_token(&r->choices[c->index], t, wants_logs(r), r->p.logprobs)) {
        r->any_error = true;
        snprintf(r->error, sizeof r->error, "out of memory");
    }
    pthread_mutex_unlock(&r->mu);
}

/* The finish reason as a string of our own (the engine's is valid during its call only). */
static const char *own_reason(const char *r) {
    static const char *const REASONS[] = {"stop", "length", "cancelled", "error"};
    for (size_t i = 0; i < sizeof REASONS / sizeof REASONS[0]; i++)
        if (strcmp(r, REASONS[i]) == 0) return REASONS[i];
    return "error";
}

static void on_done(void *ctx, const EngineDone *d) {
    ReqChoice *c = ctx;
    Req *r = c->r;
    Server *s = r->srv;
    pthread_mutex_lock(&r->mu);
    Choice *ch = &r->choices[c->index];
    if (d->text_len) {   /* held-back text that is part of the output after all */
        EngineToken t = {.id = -1, .text = d->text, .text_len = d->text_len, .text_offset = d->text_offset};
        if (r->p.stream) req_event(r, openai_chunk_json(&r->meta, c->index, d->text, d->text_len, NULL, 0, NULL));
        else if (choice_add_token(ch, &t, false, 0)) r->any_error = true;
    }
    ch->finish_reason = own_reason(d->finish_reason);
    ch->prompt_tokens = d->prompt_tokens;
    ch->completion_tokens = d->completion_tokens;
    r->prompt_tokens += d->prompt_tokens;
    r->completion_tokens += d->completion_tokens;
    if (strcmp(d->finish_reason, "error") == 0) {
        r->any_error = true;
        snprintf(r->error, sizeof r->error, "%s", d->error ? d->error : "the model failed");
    } else if (strcmp(d->finish_reason, "cancelled") == 0) {
        r->any_cancelled = true;
    }
    c->done = true;
    r->n_done++;
    if (r->p.stream) {
        req_event(r, openai_chunk_json(&r->meta, c->index, "", 0, NULL, 0, d->finish_reason));
        if (r->n_done == r->n) {
            if (r->p.include_usage) req_event(r, openai_usage_chunk_json(&r->meta, r->prompt_tokens, r->completion_tokens));
            if (!r->out_failed) {
                char *done = strdup("[DONE]");
                req_event(r, done);
            }
            r->out_end = true;
        }
        req_wake(r);
    } else if (r->n_done == r->n) {
        req_wake(r);
    }
    if (r->n_done == r->n && r->t_first > 0) {
        metrics_ttft(s->metrics, r->t_first - r->t_start);
        if (r->completion_tokens > 1)
            metrics_token_latency(s->metrics, (r->t_last - r->t_first) / (r->completion_tokens - 1));
    }
    bool last = --r->refs == 0;
    pthread_mutex_unlock(&r->mu);
    if (last) req_free(r);
}

/* The stream's content reader: hands out what the engine wrote, or waits (suspended). */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    Req *r = cls;
    ssize_t k;
    pthread_mutex_lock(&r->mu);
    if (r->out_pos < r->out_len) {
        size_t n = r->out_len - r->out_pos;
        if (n > max) n = max;
        memcpy(buf, r->out + r->out_pos, n);
        r->out_pos += n;
        if (r->out_pos == r->out_len) r->out_pos = r->out_len = 0;
        k = (ssize_t)n;
    } else if (r->out_failed) {
        k = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (r->out_end) {
        k = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        MHD_suspend_connection(r->conn);
        r->suspended = true;
        k = 0;
    }
    pthread_mutex_unlock(&r->mu);
    return k;
}

static void stream_free(void *cls) { req_release(cls); }

/* ---- Conn: one HTTP request ------------------------------------------------------------ */

enum Route { R_NONE, R_COMPLETIONS, R_MODELS, R_HEALTH, R_METRICS, R_TOKENIZE, R_DETOKENIZE };

typedef struct Conn {
    double t_start;
    char method[16], url[96];
    enum Route route;
    char *body; size_t len, cap;
    bool too_large, answered, waiting;
    int status;
    Req *req;
} Conn;

static enum MHD_Result respond(Conn *c, struct MHD_Connection *conn, int status, const char *type, char *body,
                               bool retry_after) {
    if (!body) {   /* out of memory building it */
        status = 503;
        retry_after = true;
        type = "application/json";
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
        if (!body) return MHD_NO;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", type);
    if (retry_after) MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    c->status = status;
    c->answered = true;
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result respond_error(Conn *c, struct MHD_Connection *conn, const ApiError *e) {
    return respond(c, conn, e->status, "application/json", openai_error_json(e), e->status == 503);
}

static enum MHD_Result fail(Conn *c, struct MHD_Connection *conn, int status, const char *type, const char *msg) {
    ApiError e;
    api_error(&e, status, type, NULL, "%s", msg);
    return respond_error(c, conn, &e);
}

/* Equal in time that depends only on the lengths, not on where they differ. */
static bool same_secret(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    unsigned char diff = (unsigned char)(na != nb);
    for (size_t i = 0; i < na; i++) diff |= (unsigned char)(a[i] ^ b[nb ? i % nb : 0]);
    return diff == 0;
}

static bool authorized(Server *s, struct MHD_Connection *conn) {
    if (!s->api_key) return true;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    while (*h == ' ') h++;
    return same_secret(h, s->api_key);
}

static enum Route route_of(const char *url, bool *method_ok, const char *method) {
    static const struct { const char *url, *method; enum Route r; } ROUTES[] = {
        {"/v1/completions", "POST", R_COMPLETIONS}, {"/v1/models", "GET", R_MODELS},
        {"/health", "GET", R_HEALTH},               {"/metrics", "GET", R_METRICS},
        {"/tokenize", "POST", R_TOKENIZE},          {"/detokenize", "POST", R_DETOKENIZE},
    };
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++)
        if (strcmp(url, ROUTES[i].url) == 0) {
            *method_ok = strcmp(method, ROUTES[i].method) == 0 ||
                         (strcmp(ROUTES[i].method, "GET") == 0 && strcmp(method, "HEAD") == 0);
            return ROUTES[i].r;
        }
    return R_NONE;
}

static void track_set(Server *s, struct MHD_Connection *conn, bool reading) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    Track *t = ci ? ci->socket_context : NULL;
    if (!t) return;
    pthread_mutex_lock(&s->track_mu);
    t->reading = reading;
    t->since = now_s();
    pthread_mutex_unlock(&s->track_mu);
}

/* ---- completions ----------------------------------------------------------------------- */

static enum MHD_Result completion_response(Conn *c, struct MHD_Connection *conn) {
    Req *r = c->req;
    pthread_mutex_lock(&r->mu);
    enum MHD_Result ok;
    if (r->any_error) {
        ok = fail(c, conn, 500, "server_error", r->error);
    } else if (r->any_cancelled) {
        ok = fail(c, conn, 503, "server_error", "the request was cancelled (the server is shutting down)");
    } else {
        ok = respond(c, conn, 200, "application/json", openai_completion_json(&r->meta, r->choices, r->n), false);
    }
    pthread_mutex_unlock(&r->mu);
    return ok;
}

/* Cancels the engine requests of r not done yet (the HTTP side gave up). */
static void cancel_unfinished(Server *s, Req *r, int upto) {
    uint64_t ids[OPENAI_MAX_PROMPTS];
    int n = 0;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < upto; i++)
        if (r->rc[i].id && !r->rc[i].done) ids[n++] = r->rc[i].id;
    pthread_mutex_unlock(&r->mu);
    if (n == 0) return;
    pthread_rwlock_rdlock(&s->engine_lock);
    for (int i = 0; i < n; i++)
        if (s->engine) engine_cancel(s->engine, ids[i]);
    pthread_rwlock_unlock(&s->engine_lock);
}

static enum MHD_Result handle_completions(Server *s, Conn *c, struct MHD_Connection *conn) {
    uint64_t id_num = atomic_fetch_add(&s->next_id, 1);
    CompletionParams p;
    ApiError e;
    uint64_t seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ id_num;
    if (openai_parse_completion(c->body ? c->body : "", c->len, s->tok, s->vocab, seed, &p, &e))
        return respond_error(c, conn, &e);
    Req *r = calloc(1, sizeof *r);
    if (r) {
        r->choices = calloc((size_t)p.n_prompts, sizeof *r->choices);
        r->rc = calloc((size_t)p.n_prompts, sizeof *r->rc);
    }
    if (!r || !r->choices || !r->rc) {
        if (r) free(r->choices), free(r->rc);
        free(r);
        openai_completion_free(&p);
        return fail(c, conn, 503, "server_error", "out of memory");
    }
    pthread_mutex_init(&r->mu, NULL);
    r->refs = 1;   /* the Conn's */
    r->srv = s;
    r->conn = conn;
    r->p = p;
    r->n = p.n_prompts;
    r->t_start = c->t_start;
    snprintf(r->id, sizeof r->id, "cmpl-%lx%06" PRIx64, s->started, id_num);
    r->meta = (ResponseMeta){.id = r->id, .created = (long)time(NULL), .model = s->model_name, .tok = s->tok,
                             .logprobs = p.logprobs_given};
    c->req = r;
    atomic_fetch_add(&s->active, 1);

    int32_t eos = tokenizer_eos_id(s->tok);
    for (int i = 0; i < r->n; i++) {
        r->rc[i] = (ReqChoice){.r = r, .index = i};
        EngineRequest er = {
            .prompt = r->p.prompts[i], .n_prompt = r->p.n_prompt[i], .max_tokens = r->p.max_tokens,
            .sampling = r->p.sampling, .eos_id = eos, .ignore_eos = r->p.ignore_eos,
            .stop = (const char *const *)r->p.stop, .n_stop = r->p.n_stop,
            .logprobs = r->p.logprobs_given ? (r->p.logprobs > 0 ? r->p.logprobs : 1) : 0,
            .echo = r->p.echo, .on_token = on_token, .on_done = on_done, .ctx = &r->rc[i],
        };
        if (r->n > 1) er.sampling.seed += (uint64_t)i;   /* prompts of one request draw differently */
        pthread_mutex_lock(&r->mu);
        r->refs++;   /* on_done's, which may come before engine_submit returns */
        pthread_mutex_unlock(&r->mu);
        Error err = {{0}};
        uint64_t id = 0;
        int rc = -1;
        pthread_rwlock_rdlock(&s->engine_lock);
        bool closing = !s->engine || atomic_load(&s->draining);
        if (!closing) rc = engine_submit(s->engine, &er, &id, &err);
        else snprintf(err.msg, sizeof err.msg, "the server is shutting down");
        pthread_rwlock_unlock(&s->engine_lock);
        if (rc == ENGINE_OK) {
            pthread_mutex_lock(&r->mu);
            r->rc[i].id = id;
            pthread_mutex_unlock(&r->mu);
            continue;
        }
        cancel_unfinished(s, r, i);   /* the prompts before this one */
        req_release(r);   /* no on_done will come for this one (the Conn still holds r) */
        if (rc == ENGINE_FULL) return fail(c, conn, 503, "server_error", "the server is busy: the request queue is full");
        if (closing) return fail(c, conn, 503, "server_error", err.msg);
        api_error(&e, 400, "invalid_request_error", "prompt", "%s", err.msg);
        return respond_error(c, conn, &e);
    }

    if (r->p.stream) {
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, r, stream_free);
        if (!resp) {
            cancel_unfinished(s, r, r->n);
            return MHD_NO;
        }
        pthread_mutex_lock(&r->mu);
        r->refs++;   /* the response's, dropped by stream_free */
        pthread_mutex_unlock(&r->mu);
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        c->status = 200;
        c->answered = true;
        enum MHD_Result ok = MHD_queue_response(conn, 200, resp);
        MHD_destroy_response(resp);
        return ok;
    }
    pthread_mutex_lock(&r->mu);
    bool all_done = r->n_done == r->n;
    if (!all_done) {
        MHD_suspend_connection(conn);
        r->suspended = true;
        c->waiting = true;
    }
    pthread_mutex_unlock(&r->mu);
    return all_done ? completion_response(c, conn) : MHD_YES;
}

/* ---- the other routes ------------------------------------------------------------------ */

static enum MHD_Result handle(Server *s, Conn *c, struct MHD_Connection *conn) {
    if (c->route == R_HEALTH) {
        bool ok = atomic_load(&s->ready) && !atomic_load(&s->draining);
        const char *state = !atomic_load(&s->ready) ? "loading" : ok ? "ok" : "draining";
        char *body = malloc(64);
        if (body) snprintf(body, 64, "{\"status\":\"%s\"}", state);
        return respond(c, conn, ok ? 200 : 503, "application/json", body, !ok);
    }
    if (c->route == R_METRICS) {
        pthread_rwlock_rdlock(&s->engine_lock);
        char *text = metrics_render(s->metrics, s->engine);
        pthread_rwlock_unlock(&s->engine_lock);
        return respond(c, conn, 200, "text/plain; version=0.0.4", text, false);
    }
    if (!atomic_load(&s->ready)) return fail(c, conn, 503, "server_error", "the model is still loading");
    if (atomic_load(&s->draining)) return fail(c, conn, 503, "server_error", "the server is shutting down");
    ApiError e;
    char *body;
    switch (c->route) {
    case R_MODELS:
        return respond(c, conn, 200, "application/json", openai_models_json(s->model_name, s->started, s->max_model_len), false);
    case R_TOKENIZE:
        body = openai_tokenize(c->body ? c->body : "", c->len, s->tok, s->max_model_len, &e);
        return body ? respond(c, conn, 200, "application/json", body, false) : respond_error(c, conn, &e);
    case R_DETOKENIZE:
        body = openai_detokenize(c->body ? c->body : "", c->len, s->tok, s->vocab, &e);
        return body ? respond(c, conn, 200, "application/json", body, false) : respond_error(c, conn, &e);
    case R_COMPLETIONS:
        return handle_completions(s, c, conn);
    default:
        return fail(c, conn, 404, "invalid_request_error", "no such route");
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size, void **con_cls) {
    (void)version;
    Server *s = cls;
    Conn *c = *con_cls;
    if (!c) {   /* the headers are in */
        if (!(c = calloc(1, sizeof *c))) return MHD_NO;
        *con_cls = c;
        c->t_start = now_s();
        snprintf(c->method, sizeof c->method, "%s", method);
        snprintf(c->url, sizeof c->url, "%s", url);
        bool method_ok = false;
        c->route = route_of(url, &method_ok, method);
        if (c->route == R_NONE) return fail(c, conn, 404, "invalid_request_error", "no such route");
        if (!method_ok) return fail(c, conn, 405, "invalid_request_error", "method not allowed on this route");
        if (c->route != R_HEALTH && c->route != R_METRICS && !authorized(s, conn))
            return fail(c, conn, 401, "authentication_error", "a valid 'Authorization: Bearer' API key is required");
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno || end == cl || *end || n > s->cfg.max_body)
                return fail(c, conn, 413, "invalid_request_error", "the request body is too large");
        }
        return MHD_YES;
    }
    if (c->answered) {   /* answered early (an error): the body is not wanted */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t k = *upload_size;
        *upload_size = 0;
        if (c->too_large || c->len + k > s->cfg.max_body) {
            c->too_large = true;
            return MHD_NO;   /* a body without a Content-Length running past the limit: close */
        }
        if (c->len + k + 1 > c->cap) {
            size_t cap = c->cap ? c->cap : 4096;
            while (cap < c->len + k + 1) cap *= 2;
            char *p = realloc(c->body, cap);
            if (!p) return MHD_NO;
            c->body = p;
            c->cap = cap;
        }
        memcpy(c->body + c->len, upload_data, k);
        c->len += k;
        c->body[c->len] = 0;
        return MHD_YES;
    }
    if (c->waiting) {   /* resumed: every prompt is done */
        c->waiting = false;
        return completion_response(c, conn);
    }
    track_set(s, conn, false);
    return handle(s, c, conn);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    Server *s = cls;
    Conn *c = *con_cls;
    track_set(s, conn, true);   /* the next request on this connection starts arriving */
    if (!c) return;
    *con_cls = NULL;
    int status = c->answered ? c->status : 0;
    int prompt = 0, completion = 0;
    bool dropped = toe != MHD_REQUEST_TERMINATED_COMPLETED_OK;
    Req *r = c->req;
    if (r) {
        pthread_mutex_lock(&r->mu);
        r->conn = NULL;
        r->suspended = false;
        prompt = r->prompt_tokens;
        completion = r->completion_tokens;
        pthread_mutex_unlock(&r->mu);
        cancel_unfinished(s, r, r->n);   /* nothing, unless the client went away */
        req_release(r);
        atomic_fetch_sub(&s->active, 1);
    }
    double dt = now_s() - c->t_start;
    metrics_request(s->metrics, status, dt);
    if (s->cfg.log_requests) {
        char addr[INET6_ADDRSTRLEN] = "?";
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci && ci->client_addr) {
            const struct sockaddr *sa = ci->client_addr;
            if (sa->sa_family == AF_INET) inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, addr, sizeof addr);
            else if (sa->sa_family == AF_INET6) inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, addr, sizeof addr);
        }
        char url[sizeof c->url * 4 + 1];   /* the path as the client sent it, escaped */
        size_t o = 0;
        for (const unsigned char *p = (const unsigned char *)c->url; *p; p++)
            o += (size_t)sprintf(url + o, (*p < 0x20 || *p >= 0x7f || *p == '"') ? "\\x%02x" : "%c", *p);
        fprintf(stderr, "llmint8 serve: %s \"%s %s\" %d %.3fs prompt_tokens=%d completion_tokens=%d%s\n", addr, c->method,
                url, status, dt, prompt, completion, dropped ? " (connection closed early)" : "");
    }
    free(c->body);
    free(c);
}

/* ---- connections: the janitor ----------------------------------------------------------- */

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    Server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        Track *t = calloc(1, sizeof *t);
        if (!t) return;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        t->fd = ci ? ci->connect_fd : -1;
        t->reading = true;
        t->since = now_s();
        pthread_mutex_lock(&s->track_mu);
        t->next = s->tracks.next;
        t->prev = &s->tracks;
        s->tracks.next->prev = t;
        s->tracks.next = t;
        pthread_mutex_unlock(&s->track_mu);
        *socket_context = t;
    } else if (*socket_context) {   /* closed; libmicrohttpd closes the socket after this */
        Track *t = *socket_context;
        pthread_mutex_lock(&s->track_mu);
        t->prev->next = t->next;
        t->next->prev = t->prev;
        pthread_mutex_unlock(&s->track_mu);
        free(t);
        *socket_context = NULL;
    }
}

/* Once a second: a connection whose request has been arriving for longer than
 * request_timeout_s is shut down (libmicrohttpd then sees the error and closes it). */
static void *janitor(void *arg) {
    Server *s = arg;
    while (!atomic_load(&s->stopping)) {
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
        double limit = now_s() - s->cfg.request_timeout_s;
        pthread_mutex_lock(&s->track_mu);
        for (Track *t = s->tracks.next; t != &s->tracks; t = t->next)
            if (t->reading && t->since < limit && t->fd >= 0) {
                shutdown(t->fd, SHUT_RDWR);
                t->fd = -1;
            }
        pthread_mutex_unlock(&s->track_mu);
    }
    return NULL;
}

/* ---- the server ------------------------------------------------------------------------ */

/* libmicrohttpd threads, each with its own share of the connections: while one tokenizes a long
 * prompt or builds a large response, the others keep streams flowing. */
#define SERVER_HTTP_THREADS 2

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls, (void)fmt, (void)ap;   /* libmicrohttpd's notes on hostile clients; the request log says enough */
}

int server_start(const ServerConfig *cfg, Metrics *metrics, Server **out, Error *err) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->port);
    int g = getaddrinfo(cfg->host, port, &hints, &ai);
    if (g) return err_set(err, "cannot use --host '%s': %s", cfg->host, gai_strerror(g));
    Server *s = calloc(1, sizeof *s);
    if (!s) {
        freeaddrinfo(ai);
        return err_set(err, "out of memory");
    }
    s->cfg = *cfg;
    s->metrics = metrics;
    s->model_name = strdup(cfg->model_name);
    s->api_key = cfg->api_key && cfg->api_key[0] ? strdup(cfg->api_key) : NULL;
    pthread_rwlock_init(&s->engine_lock, NULL);
    pthread_mutex_init(&s->track_mu, NULL);
    s->tracks.next = s->tracks.prev = &s->tracks;
    s->started = (long)time(NULL);
    atomic_init(&s->next_id, 1);
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
                                 MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                 MHD_OPTION_THREAD_POOL_SIZE, (unsigned)SERVER_HTTP_THREADS,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout_s,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                                 MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
                                 MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->daemon) {
        int e = errno;
        server_stop(s);
        return err_set(err, "cannot listen on %s port %d: %s", cfg->host, cfg->port, e ? strerror(e) : "libmicrohttpd refused");
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : cfg->port;
    if (pthread_create(&s->janitor, NULL, janitor, s) == 0) s->janitor_running = true;
    *out = s;
    return 0;
}

int server_port(const Server *s) { return s->port; }

void server_set_ready(Server *s, Engine *e, const Tokenizer *tok, int vocab, int max_model_len) {
    pthread_rwlock_wrlock(&s->engine_lock);
    s->engine = e;
    s->tok = tok;
    s->vocab = vocab;
    s->max_model_len = max_model_len;
    pthread_rwlock_unlock(&s->engine_lock);
    atomic_store(&s->ready, true);
}

void server_drain(Server *s) {
    atomic_store(&s->draining, true);
    if (s->daemon) {
        MHD_socket fd = MHD_quiesce_daemon(s->daemon);
        if (fd != MHD_INVALID_SOCKET) close(fd);
    }
}

int server_active_requests(Server *s) { return atomic_load(&s->active); }

void server_detach_engine(Server *s) {
    pthread_rwlock_wrlock(&s->engine_lock);
    s->engine = NULL;
    pthread_rwlock_unlock(&s->engine_lock);
}

void server_stop(Server *s) {
    if (!s) return;
    atomic_store(&s->stopping, true);
    if (s->janitor_running) pthread_join(s->janitor, NULL);
    if (s->daemon) MHD_stop_daemon(s->daemon);
    pthread_rwlock_destroy(&s->engine_lock);
    pthread_mutex_destroy(&s->track_mu);
    free(s->model_name);
    free(s->api_key);
    free(s);
}
