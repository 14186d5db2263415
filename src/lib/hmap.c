/* hmap — see hmap.h.
 *
 * Open addressing with linear probing over a power-of-two table. Each slot
 * keeps the full 64-bit hash, so probes compare hashes before touching key
 * bytes and a resize never rehashes. Deletion leaves a tombstone (rather than
 * shifting entries back) so that hmap_filter can remove entries in place
 * without moving entries it has not visited yet; tombstones are cleared by
 * the next rebuild. Lookups allocate nothing.
 */
#include "hmap.h"

#include <errno.h>
#include <string.h>

#include <openssl/rand.h>

#include "log.h"
#include "util.h"

#define HMAP_MIN_CAP 8u

struct slot {
    uint64_t hash;
    void *key; /* NULL: empty; &tombstone: deleted; else our copy of the key */
    size_t klen;
    void *val;
};

struct hmap {
    struct slot *slots;
    size_t cap;   /* power of two */
    size_t count; /* live entries */
    size_t used;  /* live entries + tombstones (slots that are not empty) */
    int iterating; /* inside hmap_filter: the table must not move */
    uint8_t key[16];
};

/* Address used only as a marker; never dereferenced. */
static char tombstone;

static int slot_live(const struct slot *s)
{
    return s->key != NULL && s->key != (void *)&tombstone;
}

/* --- SipHash-2-4 (Aumasson and Bernstein, 2012) ---------------------------- */

static uint64_t rotl64(uint64_t x, unsigned b)
{
    return (x << b) | (x >> (64 - b));
}

static uint64_t load_le64(const uint8_t *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1; v1 = rotl64(v1, 13); v1 ^= v0; v0 = rotl64(v0, 32);                              \
        v2 += v3; v3 = rotl64(v3, 16); v3 ^= v2;                                                   \
        v0 += v3; v3 = rotl64(v3, 21); v3 ^= v0;                                                   \
        v2 += v1; v1 = rotl64(v1, 17); v1 ^= v2; v2 = rotl64(v2, 32);                              \
    } while (0)

uint64_t siphash24(const uint8_t key[16], const void *data, size_t len)
{
    const uint8_t *in = data;
    uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
    uint64_t v0 = k0 ^ UINT64_C(0x736f6d6570736575);
    uint64_t v1 = k1 ^ UINT64_C(0x646f72616e646f6d);
    uint64_t v2 = k0 ^ UINT64_C(0x6c7967656e657261);
    uint64_t v3 = k1 ^ UINT64_C(0x7465646279746573);
    size_t full = len & ~(size_t)7;

    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = load_le64(in + i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }

    /* Last block: the remaining 0..7 bytes, and the length's low byte on top. */
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < (len & 7); i++)
        b |= (uint64_t)in[full + i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;

    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

#undef SIPROUND

/* --- table ----------------------------------------------------------------- */

struct hmap *hmap_new(void)
{
    struct hmap *m = xcalloc(1, sizeof(*m));
    if (RAND_bytes(m->key, (int)sizeof(m->key)) != 1)
        fatal("hmap: RAND_bytes failed; cannot key the hash table");
    m->cap = HMAP_MIN_CAP;
    m->slots = xcalloc(m->cap, sizeof(*m->slots));
    return m;
}

void hmap_free(struct hmap *m, void (*free_val)(void *))
{
    if (!m)
        return;
    for (size_t i = 0; i < m->cap; i++) {
        struct slot *s = &m->slots[i];
        if (!slot_live(s))
            continue;
        if (free_val)
            free_val(s->val);
        free(s->key);
    }
    free(m->slots);
    free(m);
}

size_t hmap_count(const struct hmap *m)
{
    return m->count;
}

size_t hmap_tally(struct hmap *m, const void *key, size_t klen, long delta)
{
    if (delta == 0) /* a look only: safe where only reads are allowed (a read lock) */
        return (size_t)(uintptr_t)hmap_get(m, key, klen);
    uintptr_t n = (uintptr_t)hmap_del(m, key, klen);
    n = delta < 0 && (uintptr_t)-delta > n ? 0 : n + (uintptr_t)delta;
    if (n)
        hmap_put(m, key, klen, (void *)n);
    return n;
}

static uint64_t hmap_hash(const struct hmap *m, const void *key, size_t klen)
{
    return siphash24(m->key, key, klen);
}

/* Index of the live slot holding key, or SIZE_MAX. */
static size_t find_slot(const struct hmap *m, uint64_t h, const void *key, size_t klen)
{
    size_t mask = m->cap - 1;
    /* used < cap always holds (see need_room), so an empty slot ends every probe. */
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        const struct slot *s = &m->slots[i];
        if (s->key == NULL)
            return SIZE_MAX;
        if (s->key != (void *)&tombstone && s->hash == h && s->klen == klen &&
            (klen == 0 || memcmp(s->key, key, klen) == 0))
            return i;
    }
}

/* Rebuilds the table with new_cap slots, dropping tombstones. */
static void rebuild(struct hmap *m, size_t new_cap)
{
    struct slot *old = m->slots;
    size_t old_cap = m->cap;
    size_t mask = new_cap - 1;

    m->slots = xcalloc(new_cap, sizeof(*m->slots));
    m->cap = new_cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (!slot_live(&old[i]))
            continue;
        size_t j = (size_t)old[i].hash & mask;
        while (m->slots[j].key != NULL)
            j = (j + 1) & mask;
        m->slots[j] = old[i];
    }
    m->used = m->count;
    free(old);
}

/* Keeps (live + tombstones) at most 3/4 of the table after one more insert. */
static void need_room(struct hmap *m)
{
    if ((m->used + 1) * 4 <= m->cap * 3)
        return;
    size_t cap = m->cap;
    /* Grow only if live entries alone would pass half the table; otherwise
     * the tombstones are the problem and a same-size rebuild clears them. */
    while ((m->count + 1) * 2 > cap) {
        if (cap > SIZE_MAX / 2 / sizeof(struct slot))
            fatal("hmap: table too large");
        cap *= 2;
    }
    rebuild(m, cap);
}

/* Shrinks when at most 1/8 of the table is live. Never during hmap_filter. */
static void maybe_shrink(struct hmap *m)
{
    if (m->iterating || m->cap <= HMAP_MIN_CAP || m->count * 8 > m->cap)
        return;
    size_t cap = m->cap;
    while (cap > HMAP_MIN_CAP && m->count * 4 <= cap / 2)
        cap /= 2;
    rebuild(m, cap);
}

int hmap_put(struct hmap *m, const void *key, size_t klen, void *val)
{
    /* An insert could move the table under the walk, or land in a slot the
     * walk is about to remove: a programming error, not a runtime condition. */
    if (m->iterating)
        fatal("hmap: hmap_put called from an hmap_filter callback");
    uint64_t h = hmap_hash(m, key, klen);
    if (find_slot(m, h, key, klen) != SIZE_MAX)
        return -EEXIST;
    need_room(m);

    size_t mask = m->cap - 1;
    size_t i = (size_t)h & mask;
    while (slot_live(&m->slots[i]))
        i = (i + 1) & mask;
    struct slot *s = &m->slots[i];
    if (s->key == NULL)
        m->used++; /* reusing a tombstone does not add a used slot */
    s->key = xmalloc(klen);
    if (klen)
        memcpy(s->key, key, klen);
    s->klen = klen;
    s->hash = h;
    s->val = val;
    m->count++;
    return 0;
}

void *hmap_get(const struct hmap *m, const void *key, size_t klen)
{
    size_t i = find_slot(m, hmap_hash(m, key, klen), key, klen);
    return i == SIZE_MAX ? NULL : m->slots[i].val;
}

static void *remove_slot(struct hmap *m, size_t i)
{
    struct slot *s = &m->slots[i];
    void *val = s->val;
    free(s->key);
    s->key = (void *)&tombstone;
    s->klen = 0;
    s->val = NULL;
    m->count--;
    return val;
}

void *hmap_del(struct hmap *m, const void *key, size_t klen)
{
    size_t i = find_slot(m, hmap_hash(m, key, klen), key, klen);
    if (i == SIZE_MAX)
        return NULL;
    void *val = remove_slot(m, i);
    maybe_shrink(m);
    return val;
}

void hmap_filter(struct hmap *m, int (*cb)(const void *key, size_t klen, void *val, void *arg),
                 void *arg)
{
    /* Removal leaves tombstones, so no entry moves while we walk the slots:
     * each entry present at the start is visited exactly once. */
    m->iterating++;
    for (size_t i = 0; i < m->cap; i++) {
        struct slot *s = &m->slots[i];
        if (!slot_live(s))
            continue;
        /* Still live: the callback may have removed this entry itself. */
        if (cb(s->key, s->klen, s->val, arg) && slot_live(s))
            (void)remove_slot(m, i);
    }
    m->iterating--;
    maybe_shrink(m);
}
