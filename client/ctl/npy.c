/* npy.c: the .npy header parser behind `engramctl import FILE.npy` (format
 * in npy.h). The dict is not evaluated as Python: each key is found by its
 * quoted name and its value read in place, which is all NumPy ever writes
 * and rejects anything else. Messages name the problem, not the file: the
 * caller prefixes the path. */
#include "npy.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int npy_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int npy_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Finds `'key':` in the header dict and returns the text after it. */
static const char *npy_value(const char *hdr, const char *key)
{
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(hdr, pat);
    if (!p)
        return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    if (*p != ':')
        return NULL;
    p++;
    while (*p == ' ')
        p++;
    return p;
}

/* Parses "(a, b)" / "(a,)" / "(a)" into info->shape. */
static int npy_shape(const char *p, npy_info *info, char *err, size_t errlen)
{
    if (*p++ != '(')
        return npy_err(err, errlen, ".npy shape is not a tuple");
    info->ndim = 0;
    for (;;) {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == ')')
            break;
        if (*p < '0' || *p > '9' || info->ndim == 2)
            return npy_err(err, errlen, ".npy shape must be (rows,) or (rows, dim)");
        char *end;
        info->shape[info->ndim++] = strtoull(p, &end, 10);
        p = end;
    }
    if (info->ndim == 0)
        return npy_err(err, errlen, ".npy shape () is a scalar, want (rows, dim)");
    return 0;
}

/* Parses the NUL-terminated header dict: descr, fortran_order, shape. */
static int npy_dict(const char *hdr, npy_info *info, char *err, size_t errlen)
{
    const char *d = npy_value(hdr, "descr");
    const char *f = npy_value(hdr, "fortran_order");
    const char *s = npy_value(hdr, "shape");
    if (!d || !f || !s)
        return npy_err(err, errlen, ".npy header lacks descr, fortran_order or shape");
    if (strncmp(f, "False", 5) != 0)
        return npy_err(err, errlen, ".npy array is fortran_order; want C order");
    /* The quote is checked before stepping past it: a dict ending at
     * "'descr':" has the NUL there, and strchr past it overran the header
     * (found by fuzz_npy). */
    char q = *d;
    const char *e = q == '\'' || q == '"' ? strchr(++d, q) : NULL;
    if (!e || (size_t)(e - d) >= sizeof info->descr)
        return npy_err(err, errlen, ".npy descr is not a simple type string");
    memcpy(info->descr, d, (size_t)(e - d));
    info->descr[e - d] = '\0';
    return npy_shape(s, info, err, errlen);
}

/* Version and header length from the first have bytes; *off is where the
 * dict starts. */
static int npy_preamble(const uint8_t *pre, size_t have, uint32_t *hlen, long *off, char *err,
                        size_t errlen)
{
    if (have < 10)
        return npy_err(err, errlen, ".npy header truncated");
    uint8_t major = pre[6];
    if (major == 1) {
        *hlen = pre[8] | (uint32_t)pre[9] << 8;
        *off = 10;
    } else if (major == 2 || major == 3) {
        if (have < 12)
            return npy_err(err, errlen, ".npy header truncated");
        *hlen = pre[8] | (uint32_t)pre[9] << 8 | (uint32_t)pre[10] << 16 |
                (uint32_t)pre[11] << 24;
        *off = 12;
    } else {
        return npy_err(err, errlen, ".npy version %u is not 1, 2 or 3", major);
    }
    if (*hlen > NPY_MAX_HEADER)
        return npy_err(err, errlen, ".npy header of %u bytes is implausible", *hlen);
    return 0;
}

/* The dict is copied into an exact-size NUL-terminated buffer: the parser
 * reads it as a C string, and a dict without a NUL must not be overrun. */
static int npy_dict_bytes(const uint8_t *p, uint32_t hlen, npy_info *info, char *err,
                          size_t errlen)
{
    char *hdr = malloc((size_t)hlen + 1);
    if (!hdr)
        return npy_err(err, errlen, "out of memory for a %u-byte .npy header", hlen);
    memcpy(hdr, p, hlen);
    hdr[hlen] = '\0';
    int rc = npy_dict(hdr, info, err, errlen);
    free(hdr);
    return rc;
}

int npy_parse(const uint8_t *buf, size_t len, npy_info *info, char *err, size_t errlen)
{
    uint32_t hlen;
    long off;
    if (npy_preamble(buf, len, &hlen, &off, err, errlen))
        return -1;
    if (hlen > len - (size_t)off)
        return npy_err(err, errlen, ".npy header truncated");
    info->data_off = off + (long)hlen;
    return npy_dict_bytes(buf + off, hlen, info, err, errlen);
}

/* Reads the 10-byte preamble, 2 more for versions 2 and 3, then the dict. */
int npy_read(FILE *fp, npy_info *info, char *err, size_t errlen)
{
    uint8_t pre[12];
    size_t got = fread(pre, 1, 10, fp);
    if (got == 10 && (pre[6] == 2 || pre[6] == 3))
        got += fread(pre + 10, 1, 2, fp);
    uint32_t hlen;
    long off;
    if (npy_preamble(pre, got, &hlen, &off, err, errlen))
        return -1;
    char *hdr = malloc((size_t)hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, fp) != hlen) {
        free(hdr);
        return npy_err(err, errlen, ".npy header truncated");
    }
    hdr[hlen] = '\0';
    info->data_off = off + (long)hlen;
    int rc = npy_dict(hdr, info, err, errlen);
    free(hdr);
    return rc;
}
