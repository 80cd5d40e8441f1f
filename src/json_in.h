/* json_in.h — parsing JSON read from a file that may be hostile.
 *
 * cJSON turns every JSON string into a C string, so a string holding U+0000 — a "\u0000"
 * escape, or a raw NUL byte — would silently end early: "opt\u0000xyz" reads as "opt", a
 * tensor name "x\u0000evil" as "x", a shard "shard\u0000../../etc/passwd" as "shard". json_parse
 * refuses such text instead, and also anything after the JSON value but whitespace. Every
 * JSON file llmint8 reads (config.json, safetensors headers, the shard index, tokenizer files)
 * should go through it. */
#ifndef LLMINT8_JSON_IN_H
#define LLMINT8_JSON_IN_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "error.h"

/* Parses text[0..len) (it need not be NUL-terminated) as one JSON value. Returns the tree
 * (free it with cJSON_Delete), or NULL with a message in err that starts with `source` (the
 * file's name) and gives the byte offset of the problem: not valid JSON, a NUL byte, a
 * \u0000 escape inside a string, or text after the value. */
cJSON *json_parse(const char *source, const char *text, size_t len, Error *err);

#endif
