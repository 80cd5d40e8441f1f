/* json_out.h — the one way llmint8 prints JSON (every command's --json).
 *
 * Output is built as a cJSON tree and printed at once, so it is valid JSON in every case:
 *   - numbers: JSON has no NaN or infinity. json_add_number writes null for them, and next
 *     to it a field "<name>_null_reason" that says why (the caller's words);
 *   - integers are written exactly (as decimal text, not through a double);
 *   - strings are escaped by cJSON, and bytes that are not valid UTF-8 (a file name can hold
 *     any bytes) become U+FFFD, so the output is always UTF-8.
 * Building never stops half-way: a failed allocation is remembered in JsonOut.failed and
 * every later call does nothing, so the caller checks once, at json_out_print. */
#ifndef LLMINT8_JSON_OUT_H
#define LLMINT8_JSON_OUT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "error.h"

typedef struct JsonOut {
    cJSON *root;     /* the top-level object */
    bool failed;     /* an allocation failed somewhere: the tree is incomplete */
} JsonOut;

/* Starts an empty top-level object. */
void json_out_begin(JsonOut *j);
/* Frees the tree (json_out_print does it too). */
void json_out_free(JsonOut *j);

/* In the helpers below, `parent` is an object (or, for the json_append_* ones, an array)
 * returned by an earlier call, or j->root. A NULL parent (an earlier failure) marks j as
 * failed. The ones that create a container return it, or NULL on failure. */
cJSON *json_add_object(JsonOut *j, cJSON *parent, const char *name);
cJSON *json_add_array(JsonOut *j, cJSON *parent, const char *name);
void json_add_string(JsonOut *j, cJSON *parent, const char *name, const char *value); /* NULL: null */
void json_add_bool(JsonOut *j, cJSON *parent, const char *name, bool value);
void json_add_int(JsonOut *j, cJSON *parent, const char *name, int64_t value);
void json_add_uint(JsonOut *j, cJSON *parent, const char *name, uint64_t value);
/* value, or null and "<name>_null_reason": why_not_finite (e.g. "exp(nll_mean) overflows a
 * double") when value is NaN or infinite. */
void json_add_number(JsonOut *j, cJSON *parent, const char *name, double value, const char *why_not_finite);
/* A float32 value, written with the fewest digits that read back as the same float (6.9f
 * as 6.9, not 6.8999996185302734); null and the reason as above when it is not finite. */
void json_add_float(JsonOut *j, cJSON *parent, const char *name, float value, const char *why_not_finite);
cJSON *json_append_object(JsonOut *j, cJSON *array);
void json_append_int(JsonOut *j, cJSON *array, int64_t value);
/* A double as json_add_number writes it (null when not finite). */
void json_append_number(JsonOut *j, cJSON *array, double value);
void json_append_string(JsonOut *j, cJSON *array, const char *value);

/* A new cJSON string (not attached anywhere) of the bytes s[0..n): NUL bytes and invalid UTF-8
 * become U+FFFD, so any bytes make valid JSON. NULL when out of memory. */
cJSON *json_bytes_string(const char *s, size_t n);

/* Prints the tree to `out` with a final newline (indented if pretty, else on one line) and
 * frees it. Returns 0, or -1 with err set if building or printing ran out of memory. Write
 * errors on stdout are reported when the program exits (main.c); a caller printing to a
 * file it opened checks fclose. */
int json_out_print(JsonOut *j, FILE *out, bool pretty, Error *err);

#endif
