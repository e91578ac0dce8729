/* What the C harness programs share: MQL strings are UTF-16, and the
 * tests' inputs are ASCII. */
#ifndef EAGATE_TEST_WIDE_H
#define EAGATE_TEST_WIDE_H

#include <stddef.h>
#include <stdint.h>

/* `text` as a NUL-terminated UTF-16 string in `out` (cut to `capacity`). */
static const uint16_t *wide(const char *text, uint16_t *out, size_t capacity) {
    size_t i = 0;
    for (; text[i] != '\0' && i + 1 < capacity; i++) out[i] = (uint16_t)(unsigned char)text[i];
    out[i] = 0;
    return out;
}

#endif
