/* fuzz_pickle.c — pickle_load() on arbitrary bytes.
 *
 * The input is a data.pkl. Whatever pickle_load accepts must be a well-formed graph: every
 * node's kind is known, strings are NUL-terminated at their length, a dict has key/value
 * pairs, an object was built by calling an allowed global with a tuple, a persistent id has
 * an id. The graph is walked to depth 12 and at most 100 000 visits (it may share nodes and
 * even contain cycles, which pickle.h allows). A refusal must say where ("pickle byte N:"). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fuzz_util.h"
#include "pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The allow-list torchbin.c uses, plus nothing dangerous: a harness check below makes sure
 * every PK_GLOBAL is one of these. */
static const char *const ALLOWED[] = {
    "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "torch.HalfStorage", "torch.BFloat16Storage", "torch.FloatStorage", "torch.LongStorage", NULL,
};

static size_t visits;

static void walk(const PickleValue *v, int depth) {
    FUZZ_CHECK(v != NULL, "NULL node");
    if (depth > 12 || ++visits > 100000) return;
    FUZZ_CHECK((unsigned)v->kind <= PK_PERSID, "kind %d", (int)v->kind);
    switch (v->kind) {
    case PK_BOOL: FUZZ_CHECK(v->i == 0 || v->i == 1, "bool %lld", (long long)v->i); break;
    case PK_STR:
    case PK_GLOBAL:
        FUZZ_CHECK(v->str && v->str[v->len] == 0, "string not terminated at its length");
        if (v->kind == PK_GLOBAL) {
            bool known = false;
            for (const char *const *a = ALLOWED; *a; a++) known |= strcmp(*a, v->str) == 0;
            FUZZ_CHECK(known, "global '%s' is not on the allow-list", v->str);
        }
        break;
    case PK_DICT:
    case PK_TUPLE:
    case PK_LIST:
        FUZZ_CHECK(v->kind != PK_DICT || v->n % 2 == 0, "dict with %zu items", v->n);
        FUZZ_CHECK(v->n <= v->cap, "n %zu > cap %zu", v->n, v->cap);
        for (size_t i = 0; i < v->n; i++) walk(v->items[i], depth + 1);
        break;
    case PK_OBJECT:
        FUZZ_CHECK(v->callable && v->callable->kind == PK_GLOBAL, "object without a global");
        FUZZ_CHECK(v->args && v->args->kind == PK_TUPLE, "object without an argument tuple");
        walk(v->args, depth + 1);
        FUZZ_CHECK(v->n % 2 == 0, "object with %zu items", v->n);
        for (size_t i = 0; i < v->n; i++) walk(v->items[i], depth + 1);
        if (v->state) walk(v->state, depth + 1);
        break;
    case PK_PERSID: walk(v->args, depth + 1); break;
    default: break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    PickleDoc *doc = NULL;
    Error err;
    err.msg[0] = 0;
    if (pickle_load(data, size, ALLOWED, &doc, &err) != 0) {
        FUZZ_CHECK(doc == NULL, "failure left a document");
        FUZZ_CHECK(strncmp(err.msg, "pickle byte ", 12) == 0, "message without a position: %s", err.msg);
        return 0;
    }
    visits = 0;
    walk(pickle_root(doc), 0);
    pickle_free(doc);
    return 0;
}
