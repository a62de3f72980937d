/* npy.h: reading the header of a NumPy .npy file, for `engramctl import`.
 *
 * The format: the magic "\x93NUMPY", a major and minor version byte, the
 * header length (2 bytes little-endian in version 1, 4 bytes in 2 and 3),
 * then a Python dict literal with 'descr', 'fortran_order' and 'shape';
 * the data follows. Only what engramctl imports is accepted: C order, a
 * simple descr string, shape (rows,) or (rows, dim).
 *
 * npy_parse works on bytes in memory, so a fuzz target can call it on
 * arbitrary input; npy_read reads a file's header with the same code. */
#ifndef ENGRAM_CTL_NPY_H
#define ENGRAM_CTL_NPY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The largest header dict accepted: real ones are ~128 bytes. */
#define NPY_MAX_HEADER (1u << 20)

/* What an .npy file holds: data offset, element descr, shape. */
typedef struct npy_info {
    long data_off;
    char descr[16];
    uint64_t shape[2];
    int ndim;
} npy_info;

/* Parses buf, the first len bytes of an .npy file (the magic is the
 * caller's to check): version, header length and dict. Returns 0, or -1
 * with err naming the problem. */
int npy_parse(const uint8_t *buf, size_t len, npy_info *info, char *err, size_t errlen);

/* Reads and parses the header of the .npy file open at fp's start;
 * leaves fp just past the header. Returns 0, or -1 with err. */
int npy_read(FILE *fp, npy_info *info, char *err, size_t errlen);

#endif
