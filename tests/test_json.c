/* test_json.c — JSON in and out (json_in.h, json_out.h).
 *
 *   - json_parse refuses what cJSON would cut short or silently accept: a \u0000 escape in a
 *     string (key or value), a raw NUL byte, text after the value; it accepts an escaped
 *     backslash followed by "u0000" (no NUL there), trailing whitespace, and text that is
 *     not NUL-terminated; errors name the source and the byte;
 *   - JsonOut writes null plus "<name>_null_reason" for NaN and infinities, integers exactly
 *     (2^63 - 1 is not a double), floats with their shortest digits, invalid UTF-8 as U+FFFD,
 *     control characters escaped; its output parses back (with json_parse) to those values;
 *   - a NULL parent (an earlier failure) marks the output failed, and json_out_print then
 *     refuses to print an incomplete object. */
#include <stdbool.h>

#include "json_in.h"
#include "json_out.h"
#include "test_util.h"

static bool parses(const char *text, size_t len, Error *err) {
    cJSON *j = json_parse("t.json", text, len, err);
    cJSON_Delete(j);
    return j != NULL;
}

static bool parses_str(const char *text, Error *err) { return parses(text, strlen(text), err); }

static void test_parse(void) {
    Error err;
    CHECK(parses_str("{\"a\": \"b\"}", &err), "plain object: %s", err.msg);
    CHECK(!parses_str("{\"model_type\": \"opt\\u0000xyz\"}", &err) && strstr(err.msg, "t.json") &&
              strstr(err.msg, "\\u0000") && strstr(err.msg, "byte 19"),
          "\\u0000 in a value is refused at its byte: %s", err.msg);
    CHECK(!parses_str("{\"x\\u0000evil\": 1}", &err), "\\u0000 in a key is refused");
    CHECK(!parses_str("[\"shard\\u0000../../etc/passwd\"]", &err), "\\u0000 in an array string is refused");
    CHECK(parses_str("[\"a\\\\u0000b\"]", &err), "an escaped backslash then u0000 is not a NUL: %s", err.msg);
    CHECK(parses_str("[\"a\\u0001\\\"\\\\\"]", &err), "other escapes are fine: %s", err.msg);
    CHECK(!parses("{\"a\": 1}\0 ", 10, &err) && strstr(err.msg, "NUL byte"), "a raw NUL byte is refused: %s",
          err.msg);
    CHECK(!parses_str("{\"a\": 1} x", &err) && strstr(err.msg, "after the value"), "trailing text is refused: %s",
          err.msg);
    CHECK(parses_str("{\"a\": 1} \n\t ", &err), "trailing whitespace is fine: %s", err.msg);
    CHECK(!parses_str("{\"a\": [1, 2,, 3]}", &err) && strstr(err.msg, "not valid JSON"), "bad JSON: %s", err.msg);
    CHECK(parses("[1]]]]", 3, &err), "only len bytes are read (the text need not end with NUL)");
    CHECK(!parses("", 0, &err), "empty text is not JSON");
}

static void test_output(void) {
    JsonOut j;
    json_out_begin(&j);
    json_add_number(&j, j.root, "ppl", INFINITY, "exp(nll_mean) overflows");
    json_add_number(&j, j.root, "nan", NAN, NULL);
    json_add_number(&j, j.root, "half", 0.5, NULL);
    json_add_int(&j, j.root, "big", INT64_MAX);
    json_add_uint(&j, j.root, "seed", UINT64_MAX);
    json_add_float(&j, j.root, "f", 6.9f, NULL);
    json_add_string(&j, j.root, "name", "bad\xff\xc0 utf8 \x1b[2J \"q\"");
    json_add_string(&j, j.root, "none", NULL);
    cJSON *list = json_add_array(&j, j.root, "list");
    json_append_int(&j, list, -3);
    json_append_string(&j, list, "x");
    json_add_bool(&j, json_append_object(&j, list), "ok", true);
    CHECK(!j.failed, "building succeeded");

    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    Error err;
    CHECK(mem && json_out_print(&j, mem, true, &err) == 0, "print");
    fclose(mem);
    cJSON *back = json_parse("output", buf, len, &err);
    CHECK(back != NULL, "the output parses: %s\n%s", err.msg, buf);
    if (back) {
        const cJSON *v;
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(back, "ppl")), "infinity -> null");
        v = cJSON_GetObjectItem(back, "ppl_null_reason");
        CHECK(cJSON_IsString(v) && strstr(v->valuestring, "overflows") && strstr(v->valuestring, "infinity"),
              "with the reason");
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(back, "nan")) && cJSON_GetObjectItem(back, "nan_null_reason"),
              "NaN -> null with a reason");
        CHECK(cJSON_GetObjectItem(back, "half")->valuedouble == 0.5, "0.5");
        CHECK(strstr(buf, "\"big\": 9223372036854775807") && strstr(buf, "\"seed\": 18446744073709551615"),
              "64-bit integers exactly:\n%s", buf);
        CHECK(strstr(buf, "\"f\": 6.9,"), "6.9f as 6.9:\n%s", buf);
        v = cJSON_GetObjectItem(back, "name");
        CHECK(cJSON_IsString(v) && strcmp(v->valuestring, "bad\xEF\xBF\xBD\xEF\xBF\xBD utf8 \x1b[2J \"q\"") == 0,
              "invalid UTF-8 -> U+FFFD, the rest kept: %s", v ? v->valuestring : "?");
        CHECK(strstr(buf, "\\u001b") != NULL, "ESC written as \\u001b");
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(back, "none")), "NULL string -> null");
        CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(back, "list")) == 3, "array of 3");
        CHECK(strchr(buf, '\t') == NULL, "indented with spaces");
    }
    cJSON_Delete(back);
    free(buf);

    /* an earlier failure (a NULL container) poisons the output */
    json_out_begin(&j);
    json_add_int(&j, NULL, "lost", 1);
    json_add_int(&j, j.root, "kept", 2);
    mem = open_memstream(&buf, &len);
    CHECK(json_out_print(&j, mem, false, &err) != 0 && strstr(err.msg, "out of memory"), "incomplete output refused");
    fclose(mem);
    CHECK(len == 0, "nothing printed");
    free(buf);
}

int main(void) {
    test_parse();
    test_output();
    return test_finish("json");
}
