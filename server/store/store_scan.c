/* store_scan.c: reading one version's rows out of RocksDB in local row
 * order, a batch at a time (see store_scan_open in store.h), for
 * Admin.Verify.
 *
 * One iterator bounded to the version's key range walks the rows family;
 * each key must be the next local row and each value exactly row_bytes, so
 * a missing, extra or truncated row is named rather than hashed over. The
 * iterator is kept between batches (it pins the files it reads, so a
 * compaction meanwhile cannot pull rows from under it) and reads with
 * fill_cache off: a verify of a big table must not evict the rows lookups
 * keep hot. RocksDB checks each block's own checksum as it reads, so a
 * damaged file surfaces as the iterator's error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

struct store_scan {
    table_version *tv;
    rocksdb_readoptions_t *ro;
    rocksdb_iterator_t *it;
    uint8_t upper[ROW_KEY_LEN];  /* must outlive the iterator */
    uint64_t next;               /* the local row expected next */
};

static uint64_t key_row(const uint8_t *k)
{
    uint64_t v = 0;
    for (int i = 12; i < 20; i++)
        v = v << 8 | k[i];
    return v;
}

store_scan *store_scan_open(table_version *tv)
{
    store *s = tv->s;
    store_scan *sc = calloc(1, sizeof *sc);
    sc->tv = tv;
    __atomic_add_fetch(&tv->refs, 1, __ATOMIC_RELAXED);
    uint8_t from[ROW_KEY_LEN];
    store_row_key(from, tv->table_id, tv->version, 0);
    store_row_key(sc->upper, tv->table_id, tv->version + 1, 0);
    sc->ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_fill_cache(sc->ro, 0);
    rocksdb_readoptions_set_verify_checksums(sc->ro, 1);
    rocksdb_readoptions_set_iterate_upper_bound(sc->ro, (char *)sc->upper, sizeof sc->upper);
    sc->it = rocksdb_create_iterator_cf(s->db, sc->ro, s->cf[CF_ROWS]);
    rocksdb_iter_seek(sc->it, (char *)from, sizeof from);
    return sc;
}

/* Checks the row under the iterator; 0 or -1 with msg. */
static int check_row(const store_scan *sc, char *msg, size_t msglen)
{
    const table_version *tv = sc->tv;
    size_t kl, vl;
    const uint8_t *k = (const uint8_t *)rocksdb_iter_key(sc->it, &kl);
    rocksdb_iter_value(sc->it, &vl);
    uint64_t row = kl == ROW_KEY_LEN ? key_row(k) : UINT64_MAX;
    if (kl != ROW_KEY_LEN)
        snprintf(msg, msglen, "a key of %zu bytes follows row %llu; row keys are %d bytes", kl,
                 (unsigned long long)sc->next, ROW_KEY_LEN);
    else if (row >= tv->local_rows)
        snprintf(msg, msglen, "row %llu is stored, beyond the version's %llu rows",
                 (unsigned long long)row, (unsigned long long)tv->local_rows);
    else if (row != sc->next)
        snprintf(msg, msglen, "row %llu is missing (the next stored row is %llu)",
                 (unsigned long long)sc->next, (unsigned long long)row);
    else if (vl != tv->row_bytes)
        snprintf(msg, msglen, "row %llu is %zu bytes, not %u", (unsigned long long)row, vl,
                 tv->row_bytes);
    else
        return 0;
    return -1;
}

/* After the iterator ran out: its error, or rows missing at the end. */
static int at_end(store_scan *sc, char *msg, size_t msglen)
{
    char *rerr = NULL;
    rocksdb_iter_get_error(sc->it, &rerr);
    if (rerr) {
        snprintf(msg, msglen, "reading row %llu failed: %s", (unsigned long long)sc->next, rerr);
        free(rerr);
        return ES_DATA_LOSS;
    }
    if (sc->next < sc->tv->local_rows) {
        snprintf(msg, msglen, "rows %llu..%llu are missing (the version has %llu rows)",
                 (unsigned long long)sc->next, (unsigned long long)sc->tv->local_rows - 1,
                 (unsigned long long)sc->tv->local_rows);
        return ES_DATA_LOSS;
    }
    return ES_OK;
}

/* Rows read before a problem are returned first; the problem comes with
 * the next call (the iterator stays on the bad key), so a caller hashes
 * everything that was intact. */
int store_scan_next(store_scan *sc, uint8_t *out, size_t max, size_t *got, char *msg,
                    size_t msglen)
{
    const size_t rb = sc->tv->row_bytes;
    size_t n = 0;
    *got = 0;
    for (; n < max && rocksdb_iter_valid(sc->it); n++, sc->next++) {
        if (check_row(sc, msg, msglen)) {
            *got = n;
            return n ? ES_OK : ES_DATA_LOSS;   /* the good rows first */
        }
        size_t vl;
        memcpy(out + n * rb, rocksdb_iter_value(sc->it, &vl), rb);
        rocksdb_iter_next(sc->it);
    }
    *got = n;
    return n ? ES_OK : at_end(sc, msg, msglen);
}

void store_scan_close(store_scan *sc)
{
    if (!sc)
        return;
    rocksdb_iter_destroy(sc->it);
    rocksdb_readoptions_destroy(sc->ro);
    table_version_release(sc->tv);
    free(sc);
}
