/* utf8.h — recognising valid UTF-8 in bytes that may not be (file names, tensor names,
 * token bytes): for escaping messages, writing JSON, and the tokenizer's byte handling. */
#ifndef LLMINT8_UTF8_H
#define LLMINT8_UTF8_H

#include <stddef.h>
#include <stdint.h>

enum { U8_VALID, U8_INVALID, U8_INCOMPLETE };

/* Classifies the character at p[0..n) (n >= 1): a valid character of *len bytes, an
 * invalid "maximal subpart" of *len bytes (what Python's decoder replaces by one
 * U+FFFD), or a valid start cut off by the end of the data. Valid means RFC 3629:
 * shortest form, no surrogates, at most U+10FFFF. */
static inline int utf8_class(const uint8_t *p, size_t n, size_t *len) {
    uint8_t c = p[0];
    if (c < 0x80) {
        *len = 1;
        return U8_VALID;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;   /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) need = 2, lo = 0xA0;    /* no overlong forms */
    else if (c == 0xED) need = 2, hi = 0x9F;    /* no surrogates */
    else if (c >= 0xE1 && c <= 0xEF) need = 2;
    else if (c == 0xF0) need = 3, lo = 0x90;    /* no overlong forms */
    else if (c == 0xF4) need = 3, hi = 0x8F;    /* nothing above U+10FFFF */
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else {
        *len = 1;
        return U8_INVALID;
    }
    for (size_t k = 1; k <= need; k++) {
        if (k >= n) {
            *len = k;
            return U8_INCOMPLETE;
        }
        if (p[k] < lo || p[k] > hi) {
            *len = k;
            return U8_INVALID;
        }
        lo = 0x80, hi = 0xBF;
    }
    *len = need + 1;
    return U8_VALID;
}

/* Length (1 to 4) of the valid UTF-8 sequence at p[0..avail), or 0 if the bytes there do
 * not start one. */
static inline size_t utf8_valid_length(const unsigned char *p, size_t avail) {
    size_t len;
    return avail && utf8_class(p, avail, &len) == U8_VALID ? len : 0;
}

#endif
