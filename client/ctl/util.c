/* util.c: what every engramctl command shares: error reporting with the
 * exit-code convention, strict number parsing, and `--name value` option
 * parsing. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

/* ---- errors and number parsing ------------------------------------------ */

int die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints `engramctl: INVALID_ARGUMENT: ...` and returns the usage exit code. */
int die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "engramctl: INVALID_ARGUMENT: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see engramctl --help)\n");
    va_end(ap);
    return EXIT_USAGE;
}

int report(const engram_error *e)
{
    /* gRPC's own words name two sizes but not the option that fixes it. */
    const char *hint = e->code == ENGRAM_RESOURCE_EXHAUSTED &&
                               strstr(e->message, "message larger than max")
                           ? " (set --max-message-bytes to the server's limit)"
                           : "";
    fprintf(stderr, "engramctl: %s: %s%s\n", engram_status_name(e->code),
            e->message, hint);
    return EXIT_RPC;
}

int ctl_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* An error that is not a usage error: prints it, returns EXIT_RPC. */
int ctl_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "engramctl: %s: ", engram_status_name(code));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_RPC;
}

/* Strict unsigned decimal: digits only (no sign, space or suffix), no
 * overflow. Returns 0 or -1 after printing a message naming `what`. */
int parse_u64(const char *s, const char *what, uint64_t *out)
{
    if (!s || !*s || *s < '0' || *s > '9') {
        die_usage("%s: '%s' is not a non-negative integer", what, s ? s : "");
        return -1;
    }
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end) {
        die_usage("%s: '%s' is not a non-negative integer", what, s);
        return -1;
    }
    if (errno == ERANGE) {
        die_usage("%s: '%s' is out of range", what, s);
        return -1;
    }
    *out = v;
    return 0;
}

int parse_size(const char *s, const char *what, uint64_t *out)
{
    const char *units = "KMGT";
    size_t n = s ? strlen(s) : 0;
    size_t digits = s ? strspn(s, "0123456789") : 0;
    const char *u = n == digits + 1 ? strchr(units, s[digits]) : NULL;
    if (!digits || (n != digits && !u)) {
        die_usage("%s: '%s' is not a size (digits, then optionally K, M, G or T)", what,
                  s ? s : "");
        return -1;
    }
    errno = 0;
    unsigned long long v = strtoull(s, NULL, 10);
    unsigned shift = u ? 10u * (unsigned)(u - units + 1) : 0;
    if (errno == ERANGE || v > (UINT64_MAX >> shift)) {
        die_usage("%s: '%s' is out of range", what, s);
        return -1;
    }
    *out = (uint64_t)v << shift;
    return 0;
}

int parse_u32(const char *s, const char *what, uint32_t *out)
{
    uint64_t v;
    if (parse_u64(s, what, &v))
        return -1;
    if (v > UINT32_MAX) {
        die_usage("%s: '%s' is larger than %u", what, s, UINT32_MAX);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* ---- command options ---------------------------------------------------- */


/* Parses argv against the option names in o->names; returns 0 or the
 * usage exit code after a message. */
int parse_opts(opts *o, int argc, char **argv, const char *cmd)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            if (o->npos == (int)(sizeof o->pos / sizeof o->pos[0]))
                return die_usage("%s: more than %d arguments", cmd, o->npos);
            o->pos[o->npos++] = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        int k = 0;
        while (k < o->n && !(strlen(o->names[k]) == nlen &&
                             strncmp(o->names[k], a, nlen) == 0))
            k++;
        if (k == o->n)
            return die_usage("%s: unknown option '%.*s'", cmd, (int)nlen, a);
        if (eq) {
            o->values[k] = eq + 1;
        } else if (i + 1 < argc) {
            o->values[k] = argv[++i];
        } else {
            return die_usage("%s: option %s needs a value", cmd, a);
        }
    }
    return 0;
}

const char *opt(const opts *o, const char *name)
{
    for (int k = 0; k < o->n; k++)
        if (strcmp(o->names[k], name) == 0)
            return o->values[k];
    return NULL;
}

/* Fetches a required option, printing a usage error when missing. */
const char *ctl_need(const opts *o, const char *name, const char *cmd)
{
    const char *v = opt(o, name);
    if (!v)
        die_usage("%s: %s is required", cmd, name);
    return v;
}

/* ---- token input ------------------------------------------------------------ */

int read_token_line(FILE *in, int64_t **tokens, size_t *n, size_t *cap, size_t lineno)
{
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len = getline(&line, &lcap, in);
    if (len < 0) {
        free(line);
        return 0;
    }
    *n = 0;
    int rc = 1;
    for (char *p = strtok(line, " \t\r\n"); p; p = strtok(NULL, " \t\r\n")) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno || *end) {
            rc = die_usage("line %zu: \"%s\" is not a token id (a 64-bit integer)", lineno, p);
            break;
        }
        if (*n == *cap)
            *tokens = realloc(*tokens, (*cap = *cap ? *cap * 2 : 256) * sizeof **tokens);
        (*tokens)[(*n)++] = v;
    }
    free(line);
    return rc;
}
