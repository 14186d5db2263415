/*
 * alias — the unguessable names of apps: three words of the EFF large word
 * list ("brisk-otter-canal", about 38 bits) drawn from the CSPRNG, unique
 * among live routes, or after a few collisions a random "app-" name with
 * 60 bits. Owns nothing (the word list is compiled in from data/); the
 * registry calls it under its write lock (uniqueness is checked against the
 * route table).
 */
#ifndef JG_ALIAS_H
#define JG_ALIAS_H

#include <stddef.h>

struct route_table;

/* Writes a fresh alias that no live route uses into out (outlen >= 64). 0 or -errno. */
int alias_new(const struct route_table *t, char *out, size_t outlen);

#endif
