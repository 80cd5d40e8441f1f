/* pickle.h — a restricted reader for Python pickles, enough for a PyTorch state_dict.
 *
 * pickle_load() runs the pickle instructions in `data` and returns the value they build as
 * a small tree of PickleValue nodes. It never executes, imports or calls anything: where a
 * real unpickler would call a Python function (REDUCE) or look up a persistent id
 * (BINPERSID), the tree records the call as a node (PK_OBJECT: callable + arguments,
 * PK_PERSID: the id) and leaves its meaning to the caller (torchbin.c). The only names a
 * pickle may mention are the caller's allow-list; any other global is refused by name
 * ("pickle global 'os.system' is not allowed"), as is every opcode outside the small set
 * a torch.save of a state_dict uses (the list is in pickle.c).
 *
 * The input is hostile. Every count is bounded (PICKLE_MAX_*), the reader is a loop over the
 * instructions (no recursion), and a well-formed tree comes back or an error that gives the
 * byte offset of the failing instruction. Because memoized values are shared, the result is
 * a graph: a node may appear several times (a tied weight), and a list or dict may even
 * contain itself. Walk it to a bounded depth. */
#ifndef LLMINT8_PICKLE_H
#define LLMINT8_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define PICKLE_MAX_VALUES (1u << 21) /* nodes built (a 2000-tensor state_dict needs ~40 000) */
#define PICKLE_MAX_STACK (1u << 20)  /* values on the stack at once */
#define PICKLE_MAX_MARKS 64          /* nested MARKs (a state_dict nests 3) */
#define PICKLE_MAX_MEMO (1u << 21)   /* memo slots */
#define PICKLE_MAX_NAME 256          /* module or name of a global */

typedef enum PickleKind {
    PK_NONE,
    PK_BOOL,    /* .i is 0 or 1 */
    PK_INT,     /* .i */
    PK_FLOAT,   /* .f */
    PK_STR,     /* .str (NUL-terminated copy), .len bytes (may contain NUL) */
    PK_TUPLE,   /* .items[0 .. n) */
    PK_LIST,    /* .items[0 .. n) */
    PK_DICT,    /* .items: key, value, key, value, ... (n = 2 x pairs), in insertion order */
    PK_GLOBAL,  /* .str = "module.name", one of the allow-list */
    PK_OBJECT,  /* the result of calling .callable (a PK_GLOBAL) with .args (a PK_TUPLE);
                   .items: key/value pairs set on it afterwards (SETITEM), .state: BUILD's argument */
    PK_PERSID,  /* a persistent id: .args is the id value (for torch, a tuple naming a storage) */
} PickleKind;

typedef struct PickleValue PickleValue;
struct PickleValue {
    PickleKind kind;
    int64_t i;
    double f;
    const char *str;
    size_t len;
    PickleValue **items;
    size_t n;
    const PickleValue *callable, *args, *state;
    size_t cap; /* allocated length of items */
};

typedef struct PickleDoc PickleDoc;

/* Reads the pickle data[0 .. size). `allowed_globals` is a NULL-terminated list of
 * "module.name" strings; GLOBAL / STACK_GLOBAL of anything else is an error. On success
 * *out owns every node; pickle_root() is the value STOP returned. Errors start with
 * "pickle byte N:" — the caller adds the file. */
int pickle_load(const void *data, size_t size, const char *const *allowed_globals, PickleDoc **out, Error *err);
const PickleValue *pickle_root(const PickleDoc *doc);
void pickle_free(PickleDoc *doc);

/* The English name of a kind, for messages ("tuple", "dict", ...). */
const char *pickle_kind_name(PickleKind kind);

#endif
