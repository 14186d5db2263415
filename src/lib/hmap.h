/*
 * hmap — hash map from byte-string keys to pointers, with a keyed hash
 * (SipHash-2-4, key drawn from the OpenSSL RNG per map) so that a peer who
 * chooses keys cannot force collisions. Constant expected time per lookup.
 *
 * Owns its entries and copies of the keys; does not own the values (the
 * caller frees them, e.g. through hmap_free's callback).
 */
#ifndef JG_HMAP_H
#define JG_HMAP_H

#include <stddef.h>
#include <stdint.h>

struct hmap;

struct hmap *hmap_new(void);
/* Frees the map; calls free_val(value) for each entry when free_val != NULL. */
void hmap_free(struct hmap *m, void (*free_val)(void *));
/* Adds key -> val. Returns 0, or -EEXIST when the key is present (map unchanged). */
int hmap_put(struct hmap *m, const void *key, size_t klen, void *val);
/* Returns the value for key, or NULL. */
void *hmap_get(const struct hmap *m, const void *key, size_t klen);
/* Removes key and returns its value, or NULL when absent. */
void *hmap_del(struct hmap *m, const void *key, size_t klen);
size_t hmap_count(const struct hmap *m);

/* For a map of counters (the values are counts, never pointers): adds delta
 * to key's count (absent: 0), drops the entry at 0, returns the new count.
 * With delta 0 it only reads (like hmap_get). */
size_t hmap_tally(struct hmap *m, const void *key, size_t klen, long delta);

/*
 * Calls cb for each entry, in no particular order. If cb returns nonzero the
 * entry is removed from the map after cb returns (cb may free the value then).
 * It is the only way to delete entries during an iteration.
 */
void hmap_filter(struct hmap *m, int (*cb)(const void *key, size_t klen, void *val, void *arg),
                 void *arg);

/* SipHash-2-4 of data under a 16-byte key (exposed for tests). */
uint64_t siphash24(const uint8_t key[16], const void *data, size_t len);

#endif
