/* pickle.c — the restricted pickle reader (see pickle.h for the contract).
 *
 * A pickle is a program for a small stack machine: each instruction (an opcode byte, then
 * its operands) pushes values, or pops some and pushes what it builds from them; STOP
 * returns the value on top. MARK remembers a stack height so that TUPLE, APPENDS and
 * SETITEMS can take "everything since the mark". The memo is a table of values that
 * BINPUT stores and BINGET fetches again, which is how a pickle shares one object between
 * two places (a tied weight in a state_dict is the same tensor object twice).
 *
 * What a torch.save of a state_dict contains, and therefore all this reader accepts:
 *
 *   PROTO v (v <= 5), FRAME n (protocol 4 framing: only a size hint, skipped), STOP
 *   MARK, NONE, NEWTRUE, NEWFALSE
 *   BININT (int32), BININT1 (uint8), BININT2 (uint16), LONG1 (two's complement, <= 8 bytes),
 *   BINFLOAT (big-endian double)
 *   BINUNICODE, SHORT_BINUNICODE, BINSTRING, SHORT_BINSTRING (strings: tensor names, keys)
 *   EMPTY_TUPLE, TUPLE, TUPLE1, TUPLE2, TUPLE3 (sizes, strides, call arguments)
 *   EMPTY_LIST, APPEND, APPENDS, EMPTY_DICT, SETITEM, SETITEMS (the dict itself, metadata)
 *   GLOBAL, STACK_GLOBAL (a "module.name" reference; only names on the caller's allow-list)
 *   REDUCE (call a global with a tuple: recorded as a PK_OBJECT node, never performed)
 *   BUILD (set an object's state: recorded on the PK_OBJECT; torch uses it for the
 *          state_dict's _metadata)
 *   BINPERSID (a persistent id: torch's reference to a storage, recorded as PK_PERSID)
 *   BINPUT, LONG_BINPUT, MEMOIZE, BINGET, LONG_BINGET (the memo)
 *
 * Everything else — INST, OBJ, NEWOBJ (which create instances of arbitrary classes), EXT*
 * (the extension registry), text-mode PERSID, the protocol 0 text opcodes, bytes and
 * buffers — is refused with its name. Like CPython's unpickler, values below the latest
 * MARK cannot be popped except by the instruction that closes the mark.
 *
 * Memory: every instruction creates at most one node (PICKLE_MAX_VALUES of them), a string
 * is no longer than the input that holds it, and a container holds values that were each
 * pushed by an instruction of at least one byte, so the tree is linear in the input size. */
#include "pickle.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Nodes live in blocks of growing size: 32, 64, ... up to 4096 (small pickles stay cheap). */
static size_t block_nodes(size_t b) { return b < 7 ? (size_t)32 << b : 4096; }

/* Strings and tuples never change size, so their bytes come from an arena of chunks freed
 * together (one malloc per chunk instead of one per value). */
typedef struct Chunk {
    struct Chunk *next;
    size_t used, cap;
    max_align_t bytes[]; /* cap bytes */
} Chunk;

struct PickleDoc {
    PickleValue **blocks;   /* block b holds block_nodes(b); the last one is filled to `in_last` */
    size_t n_blocks, in_last;
    Chunk *chunks;          /* newest first */
    size_t n_values;
    const PickleValue *root;
};

typedef struct Vm {
    PickleDoc *doc;
    const unsigned char *start, *p, *end;
    size_t op_at;                 /* offset of the instruction being run, for messages */
    const char *const *allowed;
    PickleValue **stack;
    size_t sp, stack_cap;
    size_t marks[PICKLE_MAX_MARKS];
    size_t n_marks;
    PickleValue **memo;
    size_t n_memo, memo_cap;
    Error *err;
} Vm;

/* Opcode bytes, as the pickle format defines them. */
enum {
    OP_MARK = '(', OP_STOP = '.', OP_POP = '0', OP_POP_MARK = '1', OP_DUP = '2', OP_FLOAT = 'F',
    OP_INT = 'I', OP_BININT = 'J', OP_BININT1 = 'K', OP_LONG = 'L', OP_BININT2 = 'M', OP_NONE = 'N',
    OP_PERSID = 'P', OP_BINPERSID = 'Q', OP_REDUCE = 'R', OP_STRING = 'S', OP_BINSTRING = 'T',
    OP_SHORT_BINSTRING = 'U', OP_UNICODE = 'V', OP_BINUNICODE = 'X', OP_APPEND = 'a', OP_BUILD = 'b',
    OP_GLOBAL = 'c', OP_DICT = 'd', OP_EMPTY_DICT = '}', OP_APPENDS = 'e', OP_GET = 'g', OP_BINGET = 'h',
    OP_INST = 'i', OP_LONG_BINGET = 'j', OP_LIST = 'l', OP_EMPTY_LIST = ']', OP_OBJ = 'o', OP_PUT = 'p',
    OP_BINPUT = 'q', OP_LONG_BINPUT = 'r', OP_SETITEM = 's', OP_TUPLE = 't', OP_EMPTY_TUPLE = ')',
    OP_SETITEMS = 'u', OP_BINFLOAT = 'G',
    OP_PROTO = 0x80, OP_NEWOBJ = 0x81, OP_EXT1 = 0x82, OP_EXT2 = 0x83, OP_EXT4 = 0x84, OP_TUPLE1 = 0x85,
    OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87, OP_NEWTRUE = 0x88, OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a,
    OP_LONG4 = 0x8b, OP_BINBYTES = 'B', OP_SHORT_BINBYTES = 'C', OP_SHORT_BINUNICODE = 0x8c,
    OP_BINUNICODE8 = 0x8d, OP_BINBYTES8 = 0x8e, OP_EMPTY_SET = 0x8f, OP_ADDITEMS = 0x90,
    OP_FROZENSET = 0x91, OP_NEWOBJ_EX = 0x92, OP_STACK_GLOBAL = 0x93, OP_MEMOIZE = 0x94, OP_FRAME = 0x95,
    OP_BYTEARRAY8 = 0x96, OP_NEXT_BUFFER = 0x97, OP_READONLY_BUFFER = 0x98,
};

/* Names of the opcodes this reader refuses, so that the message says what was found. */
static const char *refused_name(int op) {
    switch (op) {
    case OP_POP: return "POP";
    case OP_POP_MARK: return "POP_MARK";
    case OP_DUP: return "DUP";
    case OP_FLOAT: return "FLOAT";
    case OP_INT: return "INT";
    case OP_LONG: return "LONG";
    case OP_PERSID: return "PERSID";
    case OP_STRING: return "STRING";
    case OP_UNICODE: return "UNICODE";
    case OP_DICT: return "DICT";
    case OP_GET: return "GET";
    case OP_INST: return "INST";
    case OP_LIST: return "LIST";
    case OP_OBJ: return "OBJ";
    case OP_PUT: return "PUT";
    case OP_NEWOBJ: return "NEWOBJ";
    case OP_EXT1: return "EXT1";
    case OP_EXT2: return "EXT2";
    case OP_EXT4: return "EXT4";
    case OP_LONG4: return "LONG4";
    case OP_BINBYTES: return "BINBYTES";
    case OP_SHORT_BINBYTES: return "SHORT_BINBYTES";
    case OP_BINUNICODE8: return "BINUNICODE8";
    case OP_BINBYTES8: return "BINBYTES8";
    case OP_EMPTY_SET: return "EMPTY_SET";
    case OP_ADDITEMS: return "ADDITEMS";
    case OP_FROZENSET: return "FROZENSET";
    case OP_NEWOBJ_EX: return "NEWOBJ_EX";
    case OP_BYTEARRAY8: return "BYTEARRAY8";
    case OP_NEXT_BUFFER: return "NEXT_BUFFER";
    case OP_READONLY_BUFFER: return "READONLY_BUFFER";
    default: return NULL;
    }
}

const char *pickle_kind_name(PickleKind kind) {
    static const char *const names[] = {"None", "bool", "int", "float", "str", "tuple",
                                        "list", "dict", "global", "object", "persistent id"};
    return (unsigned)kind < sizeof names / sizeof names[0] ? names[kind] : "?";
}

/* ---- errors and nodes ----------------------------------------------------------------- */

static int fail(Vm *vm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(Vm *vm, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return err_set(vm->err, "pickle byte %zu: %s", vm->op_at, msg);
}

static PickleValue *new_value(Vm *vm, PickleKind kind) {
    PickleDoc *d = vm->doc;
    if (d->n_values >= PICKLE_MAX_VALUES) {
        fail(vm, "more than %u values (not a state_dict this reader can take)", PICKLE_MAX_VALUES);
        return NULL;
    }
    if (d->n_blocks == 0 || d->in_last == block_nodes(d->n_blocks - 1)) {
        PickleValue **blocks = realloc(d->blocks, (d->n_blocks + 1) * sizeof *blocks);
        if (!blocks) goto oom;
        d->blocks = blocks;
        if (!(d->blocks[d->n_blocks] = calloc(block_nodes(d->n_blocks), sizeof(PickleValue)))) goto oom;
        d->n_blocks++;
        d->in_last = 0;
    }
    PickleValue *v = &d->blocks[d->n_blocks - 1][d->in_last++];
    d->n_values++;
    v->kind = kind;
    return v;
oom:
    fail(vm, "out of memory");
    return NULL;
}

/* n bytes from the arena, aligned for pointers. */
static void *arena_alloc(Vm *vm, size_t n) {
    PickleDoc *d = vm->doc;
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    Chunk *c = d->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = c ? 2 * c->cap : 4096;
        if (cap > (1u << 20)) cap = 1u << 20;
        if (cap < n) cap = n;
        if (!(c = malloc(sizeof *c + cap))) {
            fail(vm, "out of memory");
            return NULL;
        }
        c->cap = cap;
        c->used = 0;
        c->next = d->chunks;
        d->chunks = c;
    }
    void *p = (char *)c->bytes + c->used;
    c->used += n;
    return p;
}

/* Appends x to a container's items. */
static int add_item(Vm *vm, PickleValue *c, PickleValue *x) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 4;
        PickleValue **items = realloc(c->items, cap * sizeof *items);
        if (!items) return fail(vm, "out of memory");
        c->items = items;
        c->cap = cap;
    }
    c->items[c->n++] = x;
    return 0;
}

/* ---- the stack ------------------------------------------------------------------------ */

static int push(Vm *vm, PickleValue *v) {
    if (!v) return -1;
    if (vm->sp == vm->stack_cap) {
        if (vm->stack_cap >= PICKLE_MAX_STACK) return fail(vm, "stack deeper than %u values", PICKLE_MAX_STACK);
        size_t cap = vm->stack_cap ? 2 * vm->stack_cap : 64;
        PickleValue **s = realloc(vm->stack, cap * sizeof *s);
        if (!s) return fail(vm, "out of memory");
        vm->stack = s;
        vm->stack_cap = cap;
    }
    vm->stack[vm->sp++] = v;
    return 0;
}

/* The lowest stack index the current instruction may pop (the latest mark, or 0). */
static size_t fence(const Vm *vm) { return vm->n_marks ? vm->marks[vm->n_marks - 1] : 0; }

static PickleValue *pop(Vm *vm) {
    if (vm->sp <= fence(vm)) {
        fail(vm, "stack underflow");
        return NULL;
    }
    return vm->stack[--vm->sp];
}

static PickleValue *top(Vm *vm) {
    if (vm->sp <= fence(vm)) {
        fail(vm, "stack underflow");
        return NULL;
    }
    return vm->stack[vm->sp - 1];
}

/* Ends the latest mark: *first is the stack index of the first value pushed since it. */
static int pop_mark(Vm *vm, size_t *first) {
    if (vm->n_marks == 0) return fail(vm, "no MARK to close");
    *first = vm->marks[--vm->n_marks];
    return 0;
}

/* ---- operands ------------------------------------------------------------------------- */

static int need(Vm *vm, size_t n, const unsigned char **out) {
    if ((size_t)(vm->end - vm->p) < n) return fail(vm, "instruction runs past the end of the data (truncated)");
    *out = vm->p;
    vm->p += n;
    return 0;
}

static uint64_t le(const unsigned char *b, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

static PickleValue *make_int(Vm *vm, int64_t i) {
    PickleValue *v = new_value(vm, PK_INT);
    if (v) v->i = i;
    return v;
}

/* A string node holding a NUL-terminated copy of b[0 .. n). */
static PickleValue *make_str(Vm *vm, PickleKind kind, const void *b, size_t n) {
    PickleValue *v = new_value(vm, kind);
    if (!v) return NULL;
    char *s = arena_alloc(vm, n + 1);
    if (!s) return NULL;
    memcpy(s, b, n);
    s[n] = 0;
    v->str = s;
    v->len = n;
    return v;
}

/* Strings with a length prefix of `width` bytes (signed for BINSTRING). */
static int op_string(Vm *vm, int width, bool is_signed) {
    const unsigned char *b = NULL;
    if (need(vm, (size_t)width, &b)) return -1;
    uint64_t n = le(b, width);
    if (is_signed && (n & 0x80000000u)) return fail(vm, "negative string length");
    if (n > (uint64_t)(vm->end - vm->p)) return fail(vm, "string of %llu bytes runs past the end of the data",
                                                      (unsigned long long)n);
    const unsigned char *s = vm->p;
    vm->p += n;
    return push(vm, make_str(vm, PK_STR, s, (size_t)n));
}

/* For messages: a name from the file with anything unprintable replaced. */
static void printable(const char *s, size_t n, char *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        out[k++] = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\'' ? s[i] : '?';
    out[k] = 0;
}

/* GLOBAL / STACK_GLOBAL: module and name, checked against the allow-list before a node
 * exists for them. */
static int push_global(Vm *vm, const char *module, size_t mlen, const char *name, size_t nlen) {
    if (mlen == 0 || nlen == 0 || mlen > PICKLE_MAX_NAME || nlen > PICKLE_MAX_NAME)
        return fail(vm, "global with an empty or overlong module or name");
    char full[2 * PICKLE_MAX_NAME + 2];
    memcpy(full, module, mlen);
    full[mlen] = '.';
    memcpy(full + mlen + 1, name, nlen);
    full[mlen + 1 + nlen] = 0;
    bool ok = strlen(full) == mlen + 1 + nlen; /* no NUL inside */
    for (const char *const *a = vm->allowed; ok && *a; a++)
        if (strcmp(*a, full) == 0) return push(vm, make_str(vm, PK_GLOBAL, full, mlen + 1 + nlen));
    char shown[2 * PICKLE_MAX_NAME + 2];
    printable(full, mlen + 1 + nlen, shown, sizeof shown);
    return fail(vm, "pickle global '%s' is not allowed (a checkpoint may name only torch tensor and storage "
                    "types and collections.OrderedDict; nothing in it is ever imported or run)",
                shown);
}

/* Reads one "text\n" operand line of GLOBAL. */
static int line(Vm *vm, const char **s, size_t *n) {
    size_t avail = (size_t)(vm->end - vm->p);
    size_t lim = avail < PICKLE_MAX_NAME + 1 ? avail : PICKLE_MAX_NAME + 1;
    const unsigned char *nl = memchr(vm->p, '\n', lim);
    if (!nl) return fail(vm, "GLOBAL operand without a newline within %d bytes", PICKLE_MAX_NAME + 1);
    *s = (const char *)vm->p;
    *n = (size_t)(nl - vm->p);
    vm->p = nl + 1;
    return 0;
}

/* ---- the memo ------------------------------------------------------------------------- */

static int memo_put(Vm *vm, uint64_t idx) {
    PickleValue *v = top(vm);
    if (!v) return -1;
    /* Picklers number memo slots 0, 1, 2, ...; a slot may be rewritten but not skipped
     * ahead, which keeps the table as small as the pickle. */
    if (idx > vm->n_memo || idx >= PICKLE_MAX_MEMO)
        return fail(vm, "memo slot %llu out of order (%zu slots so far)", (unsigned long long)idx, vm->n_memo);
    if (idx == vm->n_memo) {
        if (vm->n_memo == vm->memo_cap) {
            size_t cap = vm->memo_cap ? 2 * vm->memo_cap : 64;
            PickleValue **m = realloc(vm->memo, cap * sizeof *m);
            if (!m) return fail(vm, "out of memory");
            vm->memo = m;
            vm->memo_cap = cap;
        }
        vm->n_memo++;
    }
    vm->memo[idx] = v;
    return 0;
}

static int memo_get(Vm *vm, uint64_t idx) {
    if (idx >= vm->n_memo) return fail(vm, "memo slot %llu was never stored", (unsigned long long)idx);
    return push(vm, vm->memo[idx]);
}

/* ---- containers ----------------------------------------------------------------------- */

/* A tuple of the values stack[first .. sp), which are popped. */
static int build_tuple(Vm *vm, size_t first) {
    PickleValue *t = new_value(vm, PK_TUPLE);
    if (!t) return -1;
    size_t n = vm->sp - first;
    if (n) {
        if (!(t->items = arena_alloc(vm, n * sizeof *t->items))) return -1;
        memcpy(t->items, vm->stack + first, n * sizeof *t->items);
        t->n = t->cap = n;
    }
    vm->sp = first;
    return push(vm, t);
}

/* TUPLE1..3: the top k values. */
static int tuple_of_top(Vm *vm, size_t k) {
    if (vm->sp - fence(vm) < k) return fail(vm, "stack underflow");
    return build_tuple(vm, vm->sp - k);
}

/* APPEND(S) / SETITEM(S): values stack[first .. sp) go into the container below them. */
static int fill(Vm *vm, size_t first, bool pairs) {
    if (first == 0 || first <= fence(vm)) return fail(vm, "stack underflow");
    PickleValue *c = vm->stack[first - 1];
    size_t n = vm->sp - first;
    if (pairs) {
        if (c->kind != PK_DICT && c->kind != PK_OBJECT)
            return fail(vm, "SETITEM on something that is not a dict (found: %s)",
                        pickle_kind_name(c->kind));
        if (n % 2) return fail(vm, "SETITEMS with an odd number of values");
    } else if (c->kind != PK_LIST) {
        return fail(vm, "APPEND on something that is not a list (found: %s)", pickle_kind_name(c->kind));
    }
    for (size_t i = first; i < vm->sp; i++)
        if (add_item(vm, c, vm->stack[i])) return -1;
    vm->sp = first;
    return 0;
}

/* ---- the loop ------------------------------------------------------------------------- */

/* Runs one instruction; returns 1 after STOP, 0 to go on, -1 on error. */
static int step(Vm *vm) {
    vm->op_at = (size_t)(vm->p - vm->start);
    const unsigned char *b = NULL;
    if (need(vm, 1, &b)) return fail(vm, "data ends without a STOP instruction (truncated)");
    int op = b[0];
    size_t first = 0;
    switch (op) {
    case OP_PROTO:
        if (need(vm, 1, &b)) return -1;
        if (b[0] < 2 || b[0] > 5) return fail(vm, "pickle protocol %d (expected 2 to 5)", b[0]);
        return 0;
    case OP_FRAME: return need(vm, 8, &b);
    case OP_STOP: {
        PickleValue *v = pop(vm);
        if (!v) return -1;
        vm->doc->root = v;
        return 1;
    }
    case OP_MARK:
        if (vm->n_marks == PICKLE_MAX_MARKS) return fail(vm, "more than %d nested MARKs", PICKLE_MAX_MARKS);
        vm->marks[vm->n_marks++] = vm->sp;
        return 0;
    case OP_NONE: return push(vm, new_value(vm, PK_NONE));
    case OP_NEWTRUE:
    case OP_NEWFALSE: {
        PickleValue *v = new_value(vm, PK_BOOL);
        if (v) v->i = op == OP_NEWTRUE;
        return push(vm, v);
    }
    case OP_BININT1: return need(vm, 1, &b) ? -1 : push(vm, make_int(vm, b[0]));
    case OP_BININT2: return need(vm, 2, &b) ? -1 : push(vm, make_int(vm, (int64_t)le(b, 2)));
    case OP_BININT: return need(vm, 4, &b) ? -1 : push(vm, make_int(vm, (int32_t)(uint32_t)le(b, 4)));
    case OP_LONG1: {
        if (need(vm, 1, &b)) return -1;
        int n = b[0];
        if (n > 8) return fail(vm, "LONG1 integer of %d bytes (at most 8 are accepted)", n);
        if (need(vm, (size_t)n, &b)) return -1;
        uint64_t u = n ? le(b, n) : 0;
        if (n && n < 8 && (b[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
        return push(vm, make_int(vm, (int64_t)u));
    }
    case OP_BINFLOAT: {
        if (need(vm, 8, &b)) return -1;
        uint64_t u = 0;
        for (int i = 0; i < 8; i++) u = (u << 8) | b[i];
        PickleValue *v = new_value(vm, PK_FLOAT);
        if (v) memcpy(&v->f, &u, sizeof v->f);
        return push(vm, v);
    }
    case OP_BINUNICODE: return op_string(vm, 4, false);
    case OP_SHORT_BINUNICODE: return op_string(vm, 1, false);
    case OP_BINSTRING: return op_string(vm, 4, true);
    case OP_SHORT_BINSTRING: return op_string(vm, 1, false);
    case OP_EMPTY_TUPLE: return build_tuple(vm, vm->sp);
    case OP_TUPLE1: return tuple_of_top(vm, 1);
    case OP_TUPLE2: return tuple_of_top(vm, 2);
    case OP_TUPLE3: return tuple_of_top(vm, 3);
    case OP_TUPLE: return pop_mark(vm, &first) ? -1 : build_tuple(vm, first);
    case OP_EMPTY_LIST: return push(vm, new_value(vm, PK_LIST));
    case OP_EMPTY_DICT: return push(vm, new_value(vm, PK_DICT));
    case OP_APPEND: return fill(vm, vm->sp - (vm->sp > 0), false);
    case OP_SETITEM: return vm->sp < 2 ? fail(vm, "stack underflow") : fill(vm, vm->sp - 2, true);
    case OP_APPENDS: return pop_mark(vm, &first) ? -1 : fill(vm, first, false);
    case OP_SETITEMS: return pop_mark(vm, &first) ? -1 : fill(vm, first, true);
    case OP_GLOBAL: {
        const char *m = NULL, *n = NULL;
        size_t ml = 0, nl = 0;
        if (line(vm, &m, &ml) || line(vm, &n, &nl)) return -1;
        return push_global(vm, m, ml, n, nl);
    }
    case OP_STACK_GLOBAL: {
        PickleValue *n = pop(vm), *m = n ? pop(vm) : NULL;
        if (!m) return -1;
        if (m->kind != PK_STR || n->kind != PK_STR) return fail(vm, "STACK_GLOBAL of a non-string");
        return push_global(vm, m->str, m->len, n->str, n->len);
    }
    case OP_REDUCE: {
        PickleValue *args = pop(vm), *fn = args ? pop(vm) : NULL;
        if (!fn) return -1;
        if (fn->kind != PK_GLOBAL)
            return fail(vm, "REDUCE calls something that is not a global (found: %s)", pickle_kind_name(fn->kind));
        if (args->kind != PK_TUPLE)
            return fail(vm, "REDUCE arguments are not a tuple (found: %s)", pickle_kind_name(args->kind));
        PickleValue *o = new_value(vm, PK_OBJECT);
        if (!o) return -1;
        o->callable = fn;
        o->args = args;
        return push(vm, o);
    }
    case OP_BUILD: {
        PickleValue *state = pop(vm), *o = state ? top(vm) : NULL;
        if (!o) return -1;
        if (o->kind != PK_OBJECT || o->state)
            return fail(vm, "BUILD on something other than an object without state (found: %s)",
                        pickle_kind_name(o->kind));
        o->state = state;
        return 0;
    }
    case OP_BINPERSID: {
        PickleValue *id = pop(vm), *v = id ? new_value(vm, PK_PERSID) : NULL;
        if (!v) return -1;
        v->args = id;
        return push(vm, v);
    }
    case OP_BINPUT: return need(vm, 1, &b) ? -1 : memo_put(vm, b[0]);
    case OP_LONG_BINPUT: return need(vm, 4, &b) ? -1 : memo_put(vm, le(b, 4));
    case OP_MEMOIZE: return memo_put(vm, vm->n_memo);
    case OP_BINGET: return need(vm, 1, &b) ? -1 : memo_get(vm, b[0]);
    case OP_LONG_BINGET: return need(vm, 4, &b) ? -1 : memo_get(vm, le(b, 4));
    default: {
        const char *name = refused_name(op);
        if (name) return fail(vm, "opcode %s (0x%02x) is not accepted in a checkpoint", name, op);
        return fail(vm, "unknown opcode 0x%02x (not a pickle, or corrupt)", op);
    }
    }
}

int pickle_load(const void *data, size_t size, const char *const *allowed_globals, PickleDoc **out, Error *err) {
    *out = NULL;
    PickleDoc *doc = calloc(1, sizeof *doc);
    if (!doc) return err_set(err, "out of memory");
    Vm vm = {.doc = doc, .start = data, .p = data, .end = (const unsigned char *)data + size,
             .allowed = allowed_globals, .err = err};
    int rc;
    while ((rc = step(&vm)) == 0) {
    }
    free(vm.stack);
    free(vm.memo);
    if (rc < 0) {
        pickle_free(doc);
        return -1;
    }
    *out = doc;
    return 0;
}

const PickleValue *pickle_root(const PickleDoc *doc) { return doc->root; }

void pickle_free(PickleDoc *doc) {
    if (!doc) return;
    for (size_t b = 0; b < doc->n_blocks; b++) {
        size_t used = b + 1 == doc->n_blocks ? doc->in_last : block_nodes(b);
        for (size_t i = 0; i < used; i++) {
            if (doc->blocks[b][i].kind != PK_TUPLE) free(doc->blocks[b][i].items); /* tuples: arena */
        }
        free(doc->blocks[b]);
    }
    free(doc->blocks);
    while (doc->chunks) {
        Chunk *next = doc->chunks->next;
        free(doc->chunks);
        doc->chunks = next;
    }
    free(doc);
}
