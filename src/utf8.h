/* utf8.h — recognising valid UTF-8 in bytes that may not be (file names, tensor names,
 * token bytes): for escaping messages and for writing JSON. */
#ifndef LLMINT8_UTF8_H
#define LLMINT8_UTF8_H

#include <stddef.h>

/* Length (1 to 4) of the valid UTF-8 sequence at p[0..avail), or 0 if the bytes there do
 * not start one. Valid means RFC 3629: shortest form, no surrogates, at most U+10FFFF. */
static inline size_t utf8_valid_length(const unsigned char *p, size_t avail) {
    if (avail == 0) return 0;
    unsigned c = p[0];
    if (c < 0x80) return 1;
    size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF; /* the allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    if (len == 0 || avail < len || p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return len;
}

#endif
