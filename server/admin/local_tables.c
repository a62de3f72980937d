/* local_tables.c: Admin.ListLocalTables. The list comes from shm.c (the
 * files published now); `active` is decided here, against the registry:
 * a file is active when the table's active version is served from that
 * very array. The host's boot_id and hostname are read per call (cheap,
 * and a hostname can change while the server runs). */
#include "local_tables.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engram/v1/engram.pb-c.h"
#include "grpc_util.h"
#include "shm.h"
#include "status.h"

static store *L;

void local_tables_setup(store *s)
{
    L = s;
}

void local_tables_teardown(void)
{
    L = NULL;
}

static int is_active(const shm_file_info *f)
{
    table_version *tv = store_acquire(L, f->id.table, 0);
    int active = tv && tv->resident == f->data;
    table_version_release(tv);
    return active;
}

int local_tables_list(server_call *c, grpc_byte_buffer *req, grpc_byte_buffer **reply,
                      char *msg, size_t msglen)
{
    (void)c;
    char why[160] = "no message";
    Engram__V1__ListLocalTablesRequest *rq = (Engram__V1__ListLocalTablesRequest *)pb_unpack(
        &engram__v1__list_local_tables_request__descriptor, req, why, sizeof why);
    if (!rq) {
        snprintf(msg, msglen, "malformed ListLocalTablesRequest: %s", why);
        return ES_INVALID_ARGUMENT;
    }
    if (*rq->table && !table_name_valid(rq->table)) {
        snprintf(msg, msglen, "invalid table name \"%.140s\": use 1-128 characters of "
                 "[A-Za-z0-9._-]", rq->table);
        protobuf_c_message_free_unpacked(&rq->base, NULL);
        return ES_INVALID_ARGUMENT;
    }
    shm_file_info *files;
    size_t n;
    int code = shm_list(&files, &n, msg, msglen);
    if (code != ES_OK) {
        protobuf_c_message_free_unpacked(&rq->base, NULL);
        return code;
    }
    Engram__V1__LocalTableFile *lf = calloc(n + 1, sizeof *lf);
    Engram__V1__LocalTableFile **lp = calloc(n + 1, sizeof *lp);
    if (!lf || !lp) {
        snprintf(msg, msglen, "out of memory listing %zu shm files", n);
        code = ES_RESOURCE_EXHAUSTED;
    }
    size_t k = 0;
    for (size_t i = 0; code == ES_OK && i < n; i++) {
        const shm_file_info *f = &files[i];
        if (*rq->table && strcmp(rq->table, f->id.table) != 0)
            continue;
        Engram__V1__LocalTableFile *x = &lf[k];
        engram__v1__local_table_file__init(x);
        x->table = (char *)f->id.table;
        x->version = f->id.version;
        x->path = (char *)f->path;
        x->file_bytes = f->file_bytes;
        x->data_offset = f->data_offset;
        x->data_bytes = f->data_bytes;
        x->rows = f->id.rows;
        x->local_rows = f->id.local_rows;
        x->row_bytes = f->id.row_bytes;
        x->dim = f->id.dim;
        x->dtype = (char *)f->id.dtype;
        x->shard_index = f->id.shard_index;
        x->shard_count = f->id.shard_count;
        x->xxh3 = f->id.xxh3;
        x->crc32 = f->id.crc32;
        x->nonce.data = (uint8_t *)f->nonce;
        x->nonce.len = sizeof f->nonce;
        x->st_dev = f->dev;
        x->st_ino = f->ino;
        x->active = is_active(f);
        lp[k++] = x;
    }
    if (code == ES_OK) {
        char boot_id[64], host[256];
        shm_host(boot_id, sizeof boot_id, host, sizeof host);
        Engram__V1__ListLocalTablesResponse r = ENGRAM__V1__LIST_LOCAL_TABLES_RESPONSE__INIT;
        r.boot_id = boot_id;
        r.hostname = host;
        r.shm_dir = (char *)(shm_dir() ? shm_dir() : "");
        r.format_version = SHM_FORMAT_VERSION;
        r.n_files = k;
        r.files = lp;
        *reply = pb_to_byte_buffer(&r.base);
    }
    free(lf);
    free(lp);
    free(files);
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    return code;
}
