/* resident.h: the resident RAM tier's memory budget.
 *
 * A table whose bytes fit the remaining budget is held as one dense array
 * (row r at r * row_bytes): a lookup is a bounds check and a memcpy, no
 * hashing and no RocksDB. This module only owns the budget and the arrays;
 * the store decides what to load and fills them. */
#ifndef ENGRAM_SERVER_RESIDENT_H
#define ENGRAM_SERVER_RESIDENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct resident_metrics {
    uint64_t budget_bytes;
    uint64_t used_bytes;     /* atomically updated */
    uint64_t tables;         /* arrays currently held */
    uint64_t refused;        /* loads refused for lack of budget */
} resident_metrics;

void resident_setup(uint64_t budget_bytes, resident_metrics *metrics);
void resident_teardown(void);

/* Reserves `bytes` of budget and returns a zeroed-on-demand array of that
 * size, or NULL when the budget (or the OS) refuses. Thread-safe. */
uint8_t *resident_alloc(size_t bytes);
/* Returns the array and its budget. Thread-safe. */
void resident_free(uint8_t *array, size_t bytes);

#endif
