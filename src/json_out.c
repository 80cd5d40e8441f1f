/* json_out.c — building and printing JSON output (see json_out.h). */
#include "json_out.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

void json_out_begin(JsonOut *j) {
    j->root = cJSON_CreateObject();
    j->failed = j->root == NULL;
}

void json_out_free(JsonOut *j) {
    cJSON_Delete(j->root);
    j->root = NULL;
}

/* Adds item under name to an object (name != NULL) or appends it to an array; takes it. */
static cJSON *attach(JsonOut *j, cJSON *parent, const char *name, cJSON *item) {
    bool ok = parent && item && (name ? cJSON_AddItemToObject(parent, name, item) : cJSON_AddItemToArray(parent, item));
    if (!ok) {
        cJSON_Delete(item);
        j->failed = true;
        return NULL;
    }
    return item;
}

cJSON *json_bytes_string(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t bad = 0;
    for (size_t i = 0; i < n;) {
        size_t k = p[i] ? utf8_valid_length(p + i, n - i) : 0;
        if (k == 0) bad++, k = 1;
        i += k;
    }
    if (bad == 0) {
        char *copy = malloc(n + 1);
        if (!copy) return NULL;
        memcpy(copy, s, n);
        copy[n] = 0;
        cJSON *item = cJSON_CreateString(copy);
        free(copy);
        return item;
    }
    char *clean = malloc(n + 2 * bad + 1); /* each bad byte grows into 3 */
    if (!clean) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = p[i] ? utf8_valid_length(p + i, n - i) : 0;
        if (k == 0) {
            memcpy(clean + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        } else {
            memcpy(clean + o, s + i, k);
            o += k;
            i += k;
        }
    }
    clean[o] = 0;
    cJSON *item = cJSON_CreateString(clean);
    free(clean);
    return item;
}

/* A cJSON string of s with every invalid UTF-8 byte replaced by U+FFFD. */
static cJSON *utf8_string(const char *s) { return json_bytes_string(s, strlen(s)); }

cJSON *json_add_object(JsonOut *j, cJSON *parent, const char *name) {
    return attach(j, parent, name, cJSON_CreateObject());
}

cJSON *json_add_array(JsonOut *j, cJSON *parent, const char *name) {
    return attach(j, parent, name, cJSON_CreateArray());
}

void json_add_string(JsonOut *j, cJSON *parent, const char *name, const char *value) {
    attach(j, parent, name, value ? utf8_string(value) : cJSON_CreateNull());
}

void json_add_bool(JsonOut *j, cJSON *parent, const char *name, bool value) {
    attach(j, parent, name, cJSON_CreateBool(value));
}

/* Integers as raw decimal text: a cJSON number is a double, exact only below 2^53. */
void json_add_int(JsonOut *j, cJSON *parent, const char *name, int64_t value) {
    char text[24];
    snprintf(text, sizeof text, "%" PRId64, value);
    attach(j, parent, name, cJSON_CreateRaw(text));
}

void json_add_uint(JsonOut *j, cJSON *parent, const char *name, uint64_t value) {
    char text[24];
    snprintf(text, sizeof text, "%" PRIu64, value);
    attach(j, parent, name, cJSON_CreateRaw(text));
}

void json_add_number(JsonOut *j, cJSON *parent, const char *name, double value, const char *why_not_finite) {
    if (isfinite(value)) {
        attach(j, parent, name, cJSON_CreateNumber(value)); /* shortest of %.15g / %.17g that reads back */
        return;
    }
    attach(j, parent, name, cJSON_CreateNull());
    char key[256];
    snprintf(key, sizeof key, "%s_null_reason", name);
    char why[300];
    snprintf(why, sizeof why, "%s (%s)", why_not_finite ? why_not_finite : "not a finite number",
             isnan(value) ? "NaN" : value > 0 ? "+infinity" : "-infinity");
    attach(j, parent, key, cJSON_CreateString(why));
}

void json_add_float(JsonOut *j, cJSON *parent, const char *name, float value, const char *why_not_finite) {
    double shortest = value;
    char text[32];
    for (int digits = 1; isfinite(value) && digits <= 9; digits++) { /* 9 digits always read back */
        snprintf(text, sizeof text, "%.*g", digits, (double)value);
        if (strtof(text, NULL) == value) {
            shortest = strtod(text, NULL); /* the double nearest that decimal: cJSON prints it as such */
            break;
        }
    }
    json_add_number(j, parent, name, shortest, why_not_finite);
}

cJSON *json_append_object(JsonOut *j, cJSON *array) { return attach(j, array, NULL, cJSON_CreateObject()); }

void json_append_int(JsonOut *j, cJSON *array, int64_t value) {
    char text[24];
    snprintf(text, sizeof text, "%" PRId64, value);
    attach(j, array, NULL, cJSON_CreateRaw(text));
}

void json_append_number(JsonOut *j, cJSON *array, double value) {
    attach(j, array, NULL, isfinite(value) ? cJSON_CreateNumber(value) : cJSON_CreateNull());
}

void json_append_string(JsonOut *j, cJSON *array, const char *value) { attach(j, array, NULL, utf8_string(value)); }

int json_out_print(JsonOut *j, FILE *out, bool pretty, Error *err) {
    char *text = j->failed ? NULL : pretty ? cJSON_Print(j->root) : cJSON_PrintUnformatted(j->root);
    json_out_free(j);
    if (!text) return err_set(err, "out of memory building the JSON output");
    /* cJSON indents with tabs and puts one after each ':'; two spaces and one space read
     * better. A tab is never inside a string (cJSON writes it as \t), so each one is layout. */
    for (const char *p = text; *p; p++) {
        if (*p != '\t') fputc(*p, out);
        else fputs(p > text && p[-1] == ':' ? " " : "  ", out);
    }
    fputc('\n', out);
    free(text);
    return 0;
}
