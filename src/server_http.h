/* server_http.h — the HTTP side of `llmint8 serve`: libmicrohttpd, routes, and the glue
 * between connections and the engine.
 *
 * Two libmicrohttpd threads (epoll) share the connections. A completion request is parsed
 * there and submitted to the engine, one engine request per prompt; the connection is then
 * suspended and resumed from the engine's callbacks (on the engine worker thread): once
 * every prompt is done for a plain response, at every token for a stream (server-sent
 * events). A client that goes away has its unfinished requests cancelled. The server keeps
 * no state between requests.
 *
 * Routes: POST /v1/completions, GET /v1/models, GET /health, GET /metrics, POST /tokenize,
 * POST /detokenize. With an API key, every route but /health and /metrics needs
 * "Authorization: Bearer KEY" (compared in constant time). */
#ifndef LLMINT8_SERVER_HTTP_H
#define LLMINT8_SERVER_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "engine.h"
#include "error.h"
#include "server_metrics.h"
#include "tokenizer.h"

typedef struct Server Server;

typedef struct ServerConfig {
    const char *host;           /* address to bind: a numeric IPv4/IPv6 address or a name */
    int port;                   /* 0: any free port (server_port tells which) */
    const char *api_key;        /* NULL or "": no authentication */
    const char *model_name;     /* what /v1/models lists and responses name */
    size_t max_body;            /* bytes; a longer request body gets 413 */
    int idle_timeout_s;         /* a connection silent this long is closed */
    int request_timeout_s;      /* a request not fully received this long after it began is closed */
    int max_connections;        /* more are refused at accept */
    bool log_requests;          /* one line per request on stderr */
} ServerConfig;

/* Starts listening (the model need not be loaded: until server_set_ready, /health answers
 * 503 and so does everything needing the model). Returns 0, or -1 with a message. */
int server_start(const ServerConfig *cfg, Metrics *metrics, Server **out, Error *err);
/* The port it listens on. */
int server_port(const Server *s);
/* The model is loaded: serve requests with this engine and tokenizer. */
void server_set_ready(Server *s, Engine *e, const Tokenizer *tok, int vocab, int max_model_len);
/* Stops accepting connections; requests arriving on open ones get 503. */
void server_drain(Server *s);
/* Completion requests whose HTTP side is still open (suspended, streaming or answering). */
int server_active_requests(Server *s);
/* Forgets the engine (call before engine_free; the HTTP side then cancels nothing). */
void server_detach_engine(Server *s);
/* Closes every connection and frees the server. Every engine request must have ended
 * (engine_free does that). */
void server_stop(Server *s);

#endif
