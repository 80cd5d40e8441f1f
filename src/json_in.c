/* json_in.c — cJSON's parser behind a check for NUL characters (see json_in.h). */
#include "json_in.h"

#include <stdbool.h>
#include <string.h>

/* Offset of the first NUL byte or "\u0000" escape in a string of text[0..len), or len if
 * there is none. Outside strings a backslash is a syntax error that cJSON reports itself;
 * inside one, a backslash escapes the next character, so "\\u0000" (a backslash, then
 * "u0000") is not a NUL. */
static size_t find_nul(const char *text, size_t len) {
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (c == 0) return i;
        if (!in_string) {
            if (c == '"') in_string = true;
            continue;
        }
        if (c == '"') {
            in_string = false;
        } else if (c == '\\' && i + 1 < len) {
            if (text[i + 1] == 'u' && i + 5 < len && memcmp(text + i + 2, "0000", 4) == 0) return i;
            i++; /* the escaped character: '"', '\\', 'u', ... */
        }
    }
    return len;
}

static bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

cJSON *json_parse(const char *source, const char *text, size_t len, Error *err) {
    size_t nul = find_nul(text, len);
    if (nul < len) {
        err_set(err, "%s: %s at byte %zu: JSON text read by llmint8 may not contain NUL characters", source,
                text[nul] ? "a string holds \\u0000 (a NUL character)" : "a NUL byte", nul);
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!root) {
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        err_set(err, "%s: not valid JSON (error near byte %zu)", source, at);
        return NULL;
    }
    size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : len;
    while (at < len && is_json_space(text[at])) at++;
    if (at < len) {
        cJSON_Delete(root);
        err_set(err, "%s: not valid JSON (unexpected text after the value, at byte %zu)", source, at);
        return NULL;
    }
    return root;
}
