/* fsutil.h: small filesystem helpers both the server's store and its
 * shared-memory files need. */
#ifndef ENGRAM_COMMON_FSUTIL_H
#define ENGRAM_COMMON_FSUTIL_H

/* mkdir -p with mode 0755: every missing directory of path. 0, or -1 with
 * errno (ENAMETOOLONG past PATH_MAX). An existing directory is not an
 * error; an existing file of that name fails later, at its use. */
int fs_mkdir_p(const char *path);

#endif
