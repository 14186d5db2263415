/*
 * fuzz.h — what every libFuzzer target of tests/fuzz shares: the entry
 * point libFuzzer calls, and CHECK, which names a broken invariant on stderr
 * and turns it into an abort() that the fuzzer reports as a crash (and
 * scripts/fuzz as a failure).
 */
#ifndef JG_FUZZ_H
#define JG_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "CHECK failed: %s:%d: %s\n", __FILE__, __LINE__, #c);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
