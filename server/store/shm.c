/* shm.c: resident table versions as files in --shm-dir (shm.h has the
 * life of a file, common/shm_format.h the format).
 *
 * The module keeps a list of the files it made, keyed by the address of
 * their rows: resident.c hands it the arrays it frees, and the ones that
 * are not files here are anonymous memory. Files are few (one per resident
 * version, a handful per model), so the list is a linked list under one
 * mutex. Creation, rename and unlink are single syscalls done under it, so
 * the name a list entry holds is always the file's current name, and a
 * final name taken over by a newer file (a version activated again while
 * a reader still holds its previous array) is never unlinked by the
 * entry it replaced. */
#define _GNU_SOURCE
#include "shm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "fsutil.h"
#include "log.h"
#include "status.h"

typedef struct shm_entry {
    struct shm_entry *next;
    shm_file_info info;          /* info.path: the final name */
    char tmp[sizeof ((shm_file_info *)0)->path];
    uint8_t *base;               /* the whole file's mapping */
    size_t map_bytes;
    int published;               /* renamed to info.path */
    int linked;                  /* info.path is still this file (counted in metrics) */
} shm_entry;

static struct {
    pthread_mutex_t lock;
    shm_metrics *m;
    char *dir;                   /* absolute; NULL: off */
    int lock_fd;
    int group_set;
    gid_t gid;
    shm_entry *head;
} S = {PTHREAD_MUTEX_INITIALIZER, NULL, NULL, -1, 0, 0, NULL};

static shm_metrics m_none;

/* ---- setup ---------------------------------------------------------------- */

/* A file this module makes: "<...>@<...>.engram" (shm.h). */
static int ours(const char *name)
{
    size_t n = strlen(name);
    return n > 7 && strcmp(name + n - 7, ".engram") == 0 && strchr(name, '@');
}

/* DIR is locked: every file of ours in it was left by a run that died
 * (a clean stop unlinks its files). */
static void remove_stale(void)
{
    DIR *d = opendir(S.dir);
    if (!d)
        return;
    unsigned removed = 0, failed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!ours(e->d_name))
            continue;
        struct stat st;
        /* fstatat without following: a link is removed, never followed. */
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            !(S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)))
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0)
            removed++;
        else
            failed++;
    }
    closedir(d);
    if (removed)
        log_info("shm_stale_removed", "dir=%s files=%u", S.dir, removed);
    if (failed)
        log_warn("shm_stale_remove_failed", "dir=%s files=%u", S.dir, failed);
}

/* Whether a new file of ours in DIR can be given S.gid: 0, or an errno.
 * An unnamed file (O_TMPFILE) leaves nothing behind; where the filesystem
 * has none, a named one matching the stale pattern, unlinked at once (and
 * by the next start should we die in between). */
static int probe_group(const char *dir)
{
    char path[PATH_MAX + 64];
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    path[0] = 0;
    if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
        snprintf(path, sizeof path, "%s/.tmp@group-probe-XXXXXX.engram", dir);
        fd = mkostemps(path, (int)strlen(".engram"), O_CLOEXEC);
    }
    if (fd < 0)
        return errno;
    int err = fchown(fd, (uid_t)-1, S.gid) < 0 ? errno : 0;
    if (path[0])
        unlink(path);
    close(fd);
    return err;
}

static int lock_dir(const char *dir, char *msg, size_t msglen)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", S.dir, SHM_LOCK_FILE);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        snprintf(msg, msglen, "--shm-dir %s: cannot open %s: %s", dir, path, strerror(errno));
        return ES_FAILED_PRECONDITION;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int err = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        close(fd);
        if (err == EWOULDBLOCK)
            snprintf(msg, msglen, "--shm-dir %s is in use by another engram-server (pid %s holds "
                     "%s); each server needs a directory of its own", dir, *pid ? pid : "unknown",
                     path);
        else
            snprintf(msg, msglen, "--shm-dir %s: cannot lock %s: %s", dir, path, strerror(err));
        return ES_FAILED_PRECONDITION;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) != n)
        log_warn("shm_lock_pid_failed", "path=%s error=\"%s\"", path, strerror(errno));
    /* The group is tried here, on a fresh file of ours, so a server that
     * may not give files that group stops at start rather than at every
     * file. Not on the lock file: it outlives the run that made it, and
     * Linux lets a file's owner "give" it the group it already has, member
     * or not, so a later run outside the group would pass. */
    int err = S.group_set ? probe_group(dir) : 0;
    if (err) {
        snprintf(msg, msglen, "--shm-group %lu: cannot give files in %s that group: %s",
                 (unsigned long)S.gid, dir, strerror(err));
        close(fd);
        return ES_FAILED_PRECONDITION;
    }
    S.lock_fd = fd;
    return ES_OK;
}

int shm_setup(const shm_options *o, shm_metrics *metrics, char *msg, size_t msglen)
{
    S.m = metrics ? metrics : &m_none;
    *S.m = (shm_metrics){SHM_METRIC(METRIC_INIT)};
    if (metrics)
        metric_register((metric *)metrics, METRIC_CARDINALITY(*metrics), NULL, NULL);
    if (!o || !o->dir)
        return ES_OK;
    if (!*o->dir) {
        snprintf(msg, msglen, "--shm-dir is empty");
        return ES_FAILED_PRECONDITION;
    }
    struct stat st;
    if (fs_mkdir_p(o->dir) < 0 || stat(o->dir, &st) < 0) {
        snprintf(msg, msglen, "--shm-dir %s: cannot create it: %s", o->dir, strerror(errno));
        return ES_FAILED_PRECONDITION;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(msg, msglen, "--shm-dir %s is not a directory", o->dir);
        return ES_FAILED_PRECONDITION;
    }
    /* Paths go to clients, which may run in another working directory. */
    S.dir = realpath(o->dir, NULL);
    if (!S.dir) {
        snprintf(msg, msglen, "--shm-dir %s: %s", o->dir, strerror(errno));
        return ES_FAILED_PRECONDITION;
    }
    S.group_set = o->group_set;
    S.gid = o->gid;
    int rc = lock_dir(o->dir, msg, msglen);
    if (rc != ES_OK) {
        free(S.dir);
        S.dir = NULL;
        return rc;
    }
    remove_stale();
    log_info("shm_dir_ready", "dir=%s mode=%s", S.dir, S.group_set ? "0640" : "0600");
    return ES_OK;
}

void shm_teardown(void)
{
    pthread_mutex_lock(&S.lock);
    /* Normally empty: the store freed every array first. Whatever is left
     * is unmapped and unlinked, as its release would have. */
    while (S.head) {
        shm_entry *e = S.head;
        S.head = e->next;
        const char *path = !e->published ? e->tmp : e->linked ? e->info.path : "";
        if (*path)
            unlink(path);
        munmap(e->base, e->map_bytes);
        free(e);
    }
    if (S.lock_fd >= 0)
        close(S.lock_fd);        /* releases the flock */
    S.lock_fd = -1;
    free(S.dir);
    S.dir = NULL;
    pthread_mutex_unlock(&S.lock);
    metric_deregister(S.m);
    S.m = NULL;
}

const char *shm_dir(void)
{
    return S.dir;
}

/* ---- files -------------------------------------------------------------------- */

static void header_encode(uint8_t *h, const shm_entry *e)
{
    const shm_ident *id = &e->info.id;
    shm_header x;
    memset(&x, 0, sizeof x);
    x.data_offset = e->info.data_offset;
    x.data_bytes = e->info.data_bytes;
    x.version = id->version;
    x.rows = id->rows;
    x.local_rows = id->local_rows;
    x.row_bytes = id->row_bytes;
    x.dim = id->dim;
    x.shard_index = id->shard_index;
    x.shard_count = id->shard_count;
    x.xxh3 = id->xxh3;
    x.crc32 = id->crc32;
    memcpy(x.nonce, e->info.nonce, 16);
    x.created_unix_ms = id->created_unix_ms;
    snprintf(x.dtype, sizeof x.dtype, "%s", id->dtype);
    snprintf(x.table, sizeof x.table, "%s", id->table);
    shm_header_encode(h, &x);
    shm_put_le32(h + SHM_HEADER_CRC_AT, (uint32_t)crc32_z(0, h, SHM_HEADER_CRC_AT));
}

static int nonce_fill(uint8_t nonce[16])
{
    size_t got = 0;
    while (got < 16) {
        ssize_t n = getrandom(nonce + got, 16 - got, 0);
        if (n < 0 && errno != EINTR)
            return -1;
        got += n > 0 ? (size_t)n : 0;
    }
    return 0;
}

static void hex(char *out, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
}

static void fail(const shm_ident *id, const char *what, int err)
{
    METRIC_INCR(S.m, failures);
    log_error("shm_file_failed", "dir=%s table=%s version=%llu error=\"%s: %s\": the version is "
              "resident in anonymous memory, and clients read it over gRPC", S.dir, id->table,
              (unsigned long long)id->version, what, strerror(err));
}

uint8_t *shm_create(const shm_ident *id, size_t bytes)
{
    if (!S.dir || !bytes)
        return NULL;
    shm_entry *e = calloc(1, sizeof *e);
    if (!e) {
        fail(id, "out of memory", ENOMEM);
        return NULL;
    }
    e->info.id = *id;
    e->info.data_offset = SHM_HEADER_BYTES;
    e->info.data_bytes = bytes;
    e->info.file_bytes = e->map_bytes = SHM_HEADER_BYTES + bytes;
    char nh[33];
    if (nonce_fill(e->info.nonce) < 0) {
        fail(id, "getrandom", errno);
        free(e);
        return NULL;
    }
    hex(nh, e->info.nonce, 16);
    int n1 = snprintf(e->tmp, sizeof e->tmp, "%s/.tmp@%s.engram", S.dir, nh);
    int n2 = snprintf(e->info.path, sizeof e->info.path, "%s/%s@v%llu@s%uof%u.engram", S.dir,
                      id->table, (unsigned long long)id->version, id->shard_index, id->shard_count);
    if (n1 >= (int)sizeof e->tmp || n2 >= (int)sizeof e->info.path) {
        fail(id, "file name too long", ENAMETOOLONG);
        free(e);
        return NULL;
    }
    mode_t mode = S.group_set ? 0640 : 0600;
    int fd = open(e->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    const char *what = "create";
    int err = 0;
    struct stat st = {0};
    if (fd < 0)
        err = errno;
    /* fchmod: the umask must not change what clients are allowed. */
    else if ((S.group_set && fchown(fd, (uid_t)-1, S.gid) < 0 && (what = "chgrp")) ||
             (fchmod(fd, mode) < 0 && (what = "chmod")) ||
             (ftruncate(fd, (off_t)e->map_bytes) < 0 && (what = "ftruncate")) ||
             (fstat(fd, &st) < 0 && (what = "fstat")))
        err = errno;
    else if ((err = posix_fallocate(fd, 0, (off_t)e->map_bytes)) != 0)
        what = "fallocate";
    else if ((e->base = mmap(NULL, e->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) ==
             MAP_FAILED) {
        err = errno;
        what = "mmap";
        e->base = NULL;
    }
    if (fd >= 0)
        close(fd);               /* the mapping keeps the file */
    if (err) {
        if (fd >= 0)
            unlink(e->tmp);
        fail(id, what, err);
        free(e);
        return NULL;
    }
    e->info.dev = (uint64_t)st.st_dev;
    e->info.ino = (uint64_t)st.st_ino;
    e->info.data = e->base + SHM_HEADER_BYTES;
#ifdef MADV_HUGEPAGE
    if (bytes >= (2u << 20))
        madvise(e->base, e->map_bytes, MADV_HUGEPAGE);
#endif
    pthread_mutex_lock(&S.lock);
    e->next = S.head;
    S.head = e;
    pthread_mutex_unlock(&S.lock);
    return e->base + SHM_HEADER_BYTES;
}

static shm_entry **find(const uint8_t *data)
{
    shm_entry **p = &S.head;
    while (*p && (*p)->info.data != data)
        p = &(*p)->next;
    return *p ? p : NULL;
}

int shm_publish(uint8_t *data)
{
    pthread_mutex_lock(&S.lock);
    shm_entry **p = data ? find(data) : NULL;
    if (!p) {
        pthread_mutex_unlock(&S.lock);
        return -1;
    }
    shm_entry *e = *p;
    header_encode(e->base, e);
    if (rename(e->tmp, e->info.path) < 0) {
        int err = errno;
        unlink(e->tmp);          /* the mapping keeps serving; the name goes */
        e->tmp[0] = 0;
        e->published = 1;        /* nothing to unlink at release */
        pthread_mutex_unlock(&S.lock);
        fail(&e->info.id, "rename", err);
        return 0;
    }
    /* The rename replaced a file of the same name (the same version
     * activated again while its previous array is still held): that one
     * is gone from DIR, and its release must not unlink this one. */
    for (shm_entry *o = S.head; o; o = o->next) {
        if (o != e && o->linked && strcmp(o->info.path, e->info.path) == 0) {
            o->linked = 0;
            METRIC_SUB(S.m, files, 1);
            METRIC_SUB(S.m, bytes, o->info.file_bytes);
        }
    }
    e->published = e->linked = 1;
    METRIC_INCR(S.m, files);
    METRIC_ADD(S.m, bytes, e->info.file_bytes);
    pthread_mutex_unlock(&S.lock);
    log_info("shm_file_published", "path=%s bytes=%llu", e->info.path,
             (unsigned long long)e->info.file_bytes);
    return 0;
}

int shm_release(uint8_t *data)
{
    pthread_mutex_lock(&S.lock);
    shm_entry **p = data ? find(data) : NULL;
    if (!p) {
        pthread_mutex_unlock(&S.lock);
        return -1;
    }
    shm_entry *e = *p;
    *p = e->next;
    const char *path = !e->published ? e->tmp : e->linked ? e->info.path : NULL;
    if (path && *path && unlink(path) < 0)
        log_warn("shm_unlink_failed", "path=%s error=\"%s\"", path, strerror(errno));
    if (e->linked) {
        METRIC_SUB(S.m, files, 1);
        METRIC_SUB(S.m, bytes, e->info.file_bytes);
    }
    pthread_mutex_unlock(&S.lock);
    if (e->linked)
        log_info("shm_file_unlinked", "path=%s", e->info.path);
    munmap(e->base, e->map_bytes);
    free(e);
    return 0;
}

static int by_table_version(const void *a, const void *b)
{
    const shm_file_info *x = a, *y = b;
    int c = strcmp(x->id.table, y->id.table);
    if (c)
        return c;
    return x->id.version < y->id.version ? -1 : x->id.version > y->id.version;
}

int shm_list(shm_file_info **out, size_t *count, char *msg, size_t msglen)
{
    *out = NULL;
    *count = 0;
    pthread_mutex_lock(&S.lock);
    size_t n = 0;
    for (shm_entry *e = S.head; e; e = e->next)
        n += e->linked;
    shm_file_info *v = n ? malloc(n * sizeof *v) : NULL;
    size_t i = 0;
    for (shm_entry *e = S.head; v && e; e = e->next)
        if (e->linked)
            v[i++] = e->info;
    pthread_mutex_unlock(&S.lock);
    if (n && !v) {
        snprintf(msg, msglen, "out of memory listing %zu shm files", n);
        return ES_RESOURCE_EXHAUSTED;
    }
    if (v)
        qsort(v, i, sizeof *v, by_table_version);
    *out = v;
    *count = i;
    return ES_OK;
}

void shm_host(char *boot_id, size_t boot_len, char *host, size_t host_len)
{
    boot_id[0] = 0;
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (fgets(boot_id, (int)boot_len, f))
            boot_id[strcspn(boot_id, "\n")] = 0;
        fclose(f);
    }
    if (gethostname(host, host_len) < 0)
        host[0] = 0;
    host[host_len - 1] = 0;
}
