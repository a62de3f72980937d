/* checkpoint.c: one Engram layer of a DeepSeek-V4.1 checkpoint as a stream
 * of mxfp8_e4m3 rows, for `engramctl import --checkpoint` and `verify
 * --checkpoint`.
 *
 * The released checkpoint keeps a layer's table as two tensors,
 * layers.L.engram.embed.weight (F8_E4M3 [rows, dim]) and
 * layers.L.engram.embed.scale (F8_E8M0 [rows, dim / 32]), in whichever
 * shard files model.safetensors.index.json names. Engines pack them into
 * one row per id (the codes, then the scales), and so does this reader, on
 * the fly: it reads a block of rows from each tensor with one large pread
 * each, packs them, and hands the packed rows out through a stdio stream
 * (fopencookie), so import and verify read a checkpoint exactly as they
 * read a file of rows. Nothing is checked against the server before every
 * header is read and both tensors agree with each other and with the spec. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "dtype.h"
#include "safetensors.h"

#define BLOCK_ROWS 8192          /* rows packed per refill: 2 MiB of codes at dim 256 */

typedef struct ckpt_stream {
    int fd_w, fd_s;              /* the files holding weight and scale */
    uint64_t off_w, off_s;       /* each tensor's first byte in its file */
    uint64_t rows, next;         /* rows in all, next row to pack */
    uint32_t dim, nscale;        /* codes and scales per row */
    uint8_t *codes, *scales, *packed;
    size_t have, pos;            /* packed bytes in the buffer, bytes handed out */
    char path_w[4300], path_s[4300];
} ckpt_stream;

static int pread_all(int fd, void *buf, size_t n, uint64_t off)
{
    for (size_t done = 0; done < n;) {
        ssize_t k = pread(fd, (char *)buf + done, n - done, (off_t)(off + done));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        done += (size_t)k;
    }
    return 0;
}

static int refill(ckpt_stream *c)
{
    uint64_t n = c->rows - c->next < BLOCK_ROWS ? c->rows - c->next : BLOCK_ROWS;
    if (pread_all(c->fd_w, c->codes, n * c->dim, c->off_w + c->next * c->dim) ||
        pread_all(c->fd_s, c->scales, n * c->nscale, c->off_s + c->next * c->nscale))
        return -1;
    const size_t rb = (size_t)c->dim + c->nscale;
    for (uint64_t i = 0; i < n; i++) {
        memcpy(c->packed + i * rb, c->codes + i * c->dim, c->dim);
        memcpy(c->packed + i * rb + c->dim, c->scales + i * c->nscale, c->nscale);
    }
    c->next += n;
    c->have = n * rb;
    c->pos = 0;
    return 0;
}

static ssize_t ckpt_read(void *cookie, char *buf, size_t size)
{
    ckpt_stream *c = cookie;
    size_t out = 0;
    while (out < size) {
        if (c->pos == c->have) {
            if (c->next == c->rows)
                break;               /* the end */
            if (refill(c)) {
                errno = EIO;
                return out ? (ssize_t)out : -1;
            }
        }
        size_t k = c->have - c->pos < size - out ? c->have - c->pos : size - out;
        memcpy(buf + out, c->packed + c->pos, k);
        c->pos += k;
        out += k;
    }
    return (ssize_t)out;
}

static int ckpt_close(void *cookie)
{
    ckpt_stream *c = cookie;
    if (c->fd_w >= 0)
        close(c->fd_w);
    if (c->fd_s >= 0 && c->fd_s != c->fd_w)
        close(c->fd_s);
    free(c->codes);
    free(c->scales);
    free(c->packed);
    free(c);
    return 0;
}

/* The shard file holding `name`, from the index (or model.safetensors when
 * there is no index). Only a plain file name is accepted: an index must
 * not send the reader outside the checkpoint's directory. */
static int file_of(const char *dir, json_t *map, const char *name, char *path, size_t cap)
{
    if (!map) {
        snprintf(path, cap, "%s/model.safetensors", dir);
        return 0;
    }
    json_t *f = json_object_get(map, name);
    if (!f)
        return ctl_fail(ENGRAM_NOT_FOUND, "%s: model.safetensors.index.json names no tensor \"%s\" "
                    "(is this a DeepSeek-V4.1 checkpoint, and is the layer an Engram layer?)",
                    dir, name);
    const char *fn = json_string_value(f);
    if (!fn || !*fn || strchr(fn, '/') || !strcmp(fn, "..") || !strcmp(fn, "."))
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: the index maps \"%s\" to %s, not a file "
                    "name in the checkpoint's directory", dir, name,
                    fn ? fn : "a non-string");
    snprintf(path, cap, "%s/%s", dir, fn);
    return 0;
}

static json_t *read_index(const char *dir, int *rc)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        if (access(path, F_OK) != 0) {
            *rc = 0;             /* no index: a one-file checkpoint */
            return NULL;
        }
        *rc = ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: %s (line %d)", path, je.text, je.line);
        return NULL;
    }
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map)) {
        json_decref(root);
        *rc = ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: no \"weight_map\" object", path);
        return NULL;
    }
    *rc = 0;
    return root;
}

/* Reads the header of `path`, finds `name` and checks its dtype and 2-D
 * shape; *off is its first byte in the file. */
static int tensor_at(const char *path, const char *name, const char *want_dtype,
                     uint64_t *rows, uint64_t *cols, uint64_t *off)
{
    st_file f;
    char err[1024];
    if (st_read_file(path, &f, err, sizeof err))
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: %s", path, err);
    const st_tensor *t = st_find(&f, name);
    int rc = 0;
    if (!t)
        rc = ctl_fail(ENGRAM_NOT_FOUND, "%s: no tensor \"%s\" although the index names this file",
                  path, name);
    else if (strcmp(t->dtype, want_dtype) != 0)
        rc = ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: tensor \"%s\" is %s; a V4.1 checkpoint stores "
                  "it as %s", path, name, t->dtype, want_dtype);
    else if (t->ndim != 2 || !t->shape[0] || !t->shape[1])
        rc = ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: tensor \"%s\" is not a non-empty 2-D "
                  "[rows, columns] tensor", path, name);
    if (!rc) {
        *rows = t->shape[0];
        *cols = t->shape[1];
        *off = f.data_start + t->begin;
    }
    st_free(&f);
    return rc;
}

int open_checkpoint(const char *dir, int64_t layer, import_spec *s, FILE **fpo)
{
    char wname[96], sname[96];
    snprintf(wname, sizeof wname, "layers.%lld.engram.embed.weight", (long long)layer);
    snprintf(sname, sizeof sname, "layers.%lld.engram.embed.scale", (long long)layer);
    int rc;
    json_t *index = read_index(dir, &rc);
    if (rc)
        return rc;
    json_t *map = index ? json_object_get(index, "weight_map") : NULL;
    ckpt_stream *c = calloc(1, sizeof *c);
    if (!c) {
        json_decref(index);
        return ctl_fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory");
    }
    c->fd_w = c->fd_s = -1;
    uint64_t wrows = 0, wcols = 0, srows = 0, scols = 0;
    rc = file_of(dir, map, wname, c->path_w, sizeof c->path_w);
    if (!rc)
        rc = file_of(dir, map, sname, c->path_s, sizeof c->path_s);
    json_decref(index);
    if (!rc)
        rc = tensor_at(c->path_w, wname, "F8_E4M3", &wrows, &wcols, &c->off_w);
    if (!rc)
        rc = tensor_at(c->path_s, sname, "F8_E8M0", &srows, &scols, &c->off_s);
    if (!rc && (srows != wrows || wcols % DTYPE_MX_BLOCK || scols != wcols / DTYPE_MX_BLOCK))
        rc = ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: %s is [%llu, %llu] and %s [%llu, %llu]; want "
                  "[rows, dim] and [rows, dim / %d]", dir, wname, (unsigned long long)wrows,
                  (unsigned long long)wcols, sname, (unsigned long long)srows,
                  (unsigned long long)scols, DTYPE_MX_BLOCK);
    if (!rc && s->dtype[0] && strcmp(s->dtype, DTYPE_MXFP8_E4M3) != 0)
        rc = ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: layer %lld holds %s rows; %s says %s", dir,
                  (long long)layer, DTYPE_MXFP8_E4M3, s->by, s->dtype);
    if (!rc && s->dim && wcols != s->dim)
        rc = ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: %s has %llu columns; %s says dim %u", dir,
                  wname, (unsigned long long)wcols, s->by, s->dim);
    if (!rc && s->rows && wrows != s->rows)
        rc = ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: %s has %llu rows; %s says %llu", dir, wname,
                  (unsigned long long)wrows, s->by, (unsigned long long)s->rows);
    if (!rc && wcols > UINT32_MAX / 2)
        rc = ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: %s: rows of %llu values are too large", dir,
                  wname, (unsigned long long)wcols);
    if (!rc) {
        c->rows = wrows;
        c->dim = (uint32_t)wcols;
        c->nscale = (uint32_t)scols;
        c->fd_w = open(c->path_w, O_RDONLY | O_CLOEXEC);
        c->fd_s = strcmp(c->path_s, c->path_w) ? open(c->path_s, O_RDONLY | O_CLOEXEC) : c->fd_w;
        if (c->fd_w < 0 || c->fd_s < 0)
            rc = ctl_fail(ENGRAM_NOT_FOUND, "%s: %s", c->fd_w < 0 ? c->path_w : c->path_s,
                      strerror(errno));
    }
    if (!rc) {
        c->codes = malloc((size_t)BLOCK_ROWS * c->dim);
        c->scales = malloc((size_t)BLOCK_ROWS * c->nscale);
        c->packed = malloc((size_t)BLOCK_ROWS * (c->dim + c->nscale));
        if (!c->codes || !c->scales || !c->packed)
            rc = ctl_fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory for %d rows", BLOCK_ROWS);
    }
    FILE *fp = NULL;
    if (!rc) {
        cookie_io_functions_t io = {.read = ckpt_read, .close = ckpt_close};
        if (!(fp = fopencookie(c, "r", io)))
            rc = ctl_fail(ENGRAM_RESOURCE_EXHAUSTED, "cannot open a stream: %s", strerror(errno));
    }
    if (rc) {
        ckpt_close(c);
        return rc;
    }
    snprintf(s->dtype, sizeof s->dtype, "%s", DTYPE_MXFP8_E4M3);
    s->dim = c->dim;
    s->rows = c->rows;
    *fpo = fp;
    return 0;
}
