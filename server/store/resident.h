/* resident.h: the resident RAM tier's memory budget.
 *
 * A table whose bytes fit the remaining budget is held as one dense array
 * (row r at r * row_bytes): a lookup is a bounds check and a memcpy, no
 * hashing and no RocksDB. This module only owns the budget and the arrays;
 * the store decides what to load and fills them. With --shm-dir an array
 * is the mapping of a file there (shm.h), the one copy that clients on the
 * host map too; otherwise anonymous memory. The budget counts rows either
 * way (a file's 4 KiB header is not charged). */
#ifndef ENGRAM_SERVER_RESIDENT_H
#define ENGRAM_SERVER_RESIDENT_H

#include <stddef.h>
#include <stdint.h>

#include "metric.h"
#include "shm.h"

/* used_bytes is also the budget's ledger: reserve() takes bytes from it
 * with a CAS, so what Stats shows is exactly what is held. */
#define RESIDENT_METRIC(ACTION)                                                   \
    ACTION(used_bytes, METRIC_GAUGE, "engram_resident_bytes", "memory.resident_tier_bytes", \
           "Bytes of tables held as dense arrays in RAM.")                         \
    ACTION(budget_bytes, METRIC_GAUGE, "engram_resident_budget_bytes",             \
           "memory.resident_tier_budget", "The resident tier's budget (--resident-budget).")
typedef struct resident_metrics {
    RESIDENT_METRIC(METRIC_DECLARE)
} resident_metrics;

/* Initializes *metrics (the caller's storage; NULL: kept here). */
void resident_setup(uint64_t budget_bytes, resident_metrics *metrics);
void resident_teardown(void);

/* Reserves `bytes` of budget and returns a zero-filled array of that
 * size, or NULL when the budget (or the OS) refuses. With --shm-dir and
 * id (the version the rows are of), the array is a new, not yet published
 * file's rows; when that file cannot be made, anonymous memory (shm.c
 * logs and counts it). Thread-safe. */
uint8_t *resident_alloc(size_t bytes, const shm_ident *id);
/* The array is filled and checked: publishes its file, if it has one. */
void resident_publish(uint8_t *array);
/* Returns the array and its budget (a file is unlinked). Thread-safe. */
void resident_free(uint8_t *array, size_t bytes);

#endif
