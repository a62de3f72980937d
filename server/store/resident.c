/* resident.c: budget accounting and allocation of resident arrays.
 *
 * Arrays are mmap'd rather than malloc'd: they are large, long-lived and
 * freed whole, so the allocator's arenas gain nothing, and MADV_HUGEPAGE
 * cuts TLB misses on random-row gathers over gigabytes. With --shm-dir,
 * shm.c makes the mapping (a file) and this file keeps the budget. The budget is
 * reserved with a CAS loop so two imports finishing together cannot both
 * take the last bytes. */
#include "resident.h"

#include <sys/mman.h>

static resident_metrics *rm;
static resident_metrics rm_none;

void resident_setup(uint64_t budget_bytes, resident_metrics *metrics)
{
    rm = metrics ? metrics : &rm_none;
    *rm = (resident_metrics){RESIDENT_METRIC(METRIC_INIT)};
    rm->budget_bytes.value = budget_bytes;
}

void resident_teardown(void)
{
    rm = NULL;
}

static int reserve(uint64_t bytes)
{
    uint64_t budget = rm->budget_bytes.value;
    uint64_t used = __atomic_load_n(&rm->used_bytes.value, __ATOMIC_RELAXED);
    do {
        if (bytes > budget || used > budget - bytes)
            return -1;
    } while (!__atomic_compare_exchange_n(&rm->used_bytes.value, &used, used + bytes,
                                          0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
    return 0;
}

uint8_t *resident_alloc(size_t bytes, const shm_ident *id)
{
    if (bytes == 0 || reserve(bytes) < 0)
        return NULL;
    uint8_t *f = id ? shm_create(id, bytes) : NULL;
    if (f)
        return f;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        METRIC_SUB(rm, used_bytes, bytes);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    if (bytes >= (2u << 20))
        madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}

void resident_publish(uint8_t *array)
{
    shm_publish(array);
}

void resident_free(uint8_t *array, size_t bytes)
{
    if (!array)
        return;
    if (shm_release(array) < 0)
        munmap(array, bytes);
    METRIC_SUB(rm, used_bytes, bytes);
}
