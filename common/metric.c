/* metric.c: the metrics registry (see metric.h) and its Prometheus text
 * rendering.
 *
 * The registry is a fixed array of registrations under one mutex: modules
 * register a handful of entries at setup, so there is nothing to grow, and
 * a reader holding the mutex keeps a module from tearing its metrics down
 * under it. Bumping a metric never touches the registry. */
#include "metric.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct registration {
    metric *m;                         /* scalar metrics ... */
    size_t n;
    void (*refresh)(void *arg);
    void *arg;
    const metric_family *f;            /* ... or a labeled family */
} registration;

static struct {
    pthread_mutex_t mu;
    registration r[METRIC_MAX_REGISTRATIONS];
    size_t n;
} R = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int add(registration reg)
{
    pthread_mutex_lock(&R.mu);
    int rc = -1;
    if (R.n < METRIC_MAX_REGISTRATIONS) {
        R.r[R.n++] = reg;
        rc = 0;
    }
    pthread_mutex_unlock(&R.mu);
    return rc;
}

int metric_register(metric *m, size_t n, void (*refresh)(void *arg), void *arg)
{
    return add((registration){.m = m, .n = n, .refresh = refresh, .arg = arg});
}

int metric_register_family(const metric_family *f)
{
    return add((registration){.f = f});
}

void metric_deregister(const void *m_or_f)
{
    if (!m_or_f)
        return;
    pthread_mutex_lock(&R.mu);
    for (size_t i = 0; i < R.n; i++) {
        if ((const void *)R.r[i].m == m_or_f || (const void *)R.r[i].f == m_or_f) {
            memmove(&R.r[i], &R.r[i + 1], (R.n - i - 1) * sizeof R.r[0]);
            R.n--;
            break;
        }
    }
    pthread_mutex_unlock(&R.mu);
}

void metric_collect(metric_sink *s)
{
    pthread_mutex_lock(&R.mu);
    for (size_t i = 0; i < R.n; i++) {
        const registration *g = &R.r[i];
        if (g->f) {
            s->family(s, g->f);
            g->f->collect(g->f, s);
            continue;
        }
        if (g->refresh)
            g->refresh(g->arg);
        for (size_t k = 0; k < g->n; k++) {
            const metric *m = &g->m[k];
            metric_family f = {.name = m->name, .type = m->type, .help = m->help,
                               .stats = {m->stats, NULL}};
            metric_sample x = {.value = __atomic_load_n(&m->value, __ATOMIC_RELAXED)};
            s->family(s, &f);
            s->sample(s, &f, &x);
        }
    }
    pthread_mutex_unlock(&R.mu);
}

/* ---- Prometheus text -------------------------------------------------------- */

typedef struct text {
    metric_sink sink;
    char *p;
    size_t len, cap;
    int oom;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(text *t, const char *fmt, ...)
{
    for (int tries = 0; tries < 2 && !t->oom; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap + (size_t)n + 1) * 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->oom = 1;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
}

/* A label value, escaped as the format requires: \\, \" and \n. */
static void put_escaped(text *t, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\')
            put(t, "\\\\");
        else if (*v == '"')
            put(t, "\\\"");
        else if (*v == '\n')
            put(t, "\\n");
        else
            put(t, "%c", *v);
    }
}

/* name{a="x",b="y"[,le="..."]} with the sample's labels (and `le`). */
static void put_series(text *t, const char *name, const char *suffix, const metric_sample *x,
                       const char *le)
{
    put(t, "%s%s", name, suffix);
    if (!x->nlabels && !le)
        return;
    put(t, "{");
    for (size_t i = 0; i < x->nlabels; i++) {
        put(t, "%s%s=\"", i ? "," : "", x->labels[i].name);
        put_escaped(t, x->labels[i].value);
        put(t, "\"");
    }
    if (le)
        put(t, "%sle=\"%s\"", x->nlabels ? "," : "", le);
    put(t, "}");
}

static const char *type_name(metric_type type)
{
    return type == METRIC_COUNTER ? "counter" : type == METRIC_GAUGE ? "gauge" : "histogram";
}

static void text_family(metric_sink *s, const metric_family *f)
{
    text *t = (text *)s;
    if (f->name)
        put(t, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, type_name(f->type));
}

static void text_sample(metric_sink *s, const metric_family *f, const metric_sample *x)
{
    text *t = (text *)s;
    if (!f->name)
        return;
    if (f->type != METRIC_HISTOGRAM) {
        put_series(t, f->name, "", x, NULL);
        if (f->scale != 0)
            put(t, " %.3f\n", (double)x->value * f->scale);
        else
            put(t, " %llu\n", (unsigned long long)x->value);
        return;
    }
    const metric_histogram *h = x->hist;
    uint64_t cum = 0;
    for (size_t k = 0; k <= h->nle; k++) {
        char le[32];
        if (k < h->nle)
            snprintf(le, sizeof le, "%g", h->le[k]);
        else
            snprintf(le, sizeof le, "+Inf");
        cum += h->buckets[k];
        put_series(t, f->name, "_bucket", x, le);
        put(t, " %llu\n", (unsigned long long)cum);
    }
    put_series(t, f->name, "_sum", x, NULL);
    put(t, " %.9f\n", h->sum);
    put_series(t, f->name, "_count", x, NULL);
    put(t, " %llu\n", (unsigned long long)h->count);
}

char *metric_render_prometheus(size_t *len)
{
    text t = {.sink = {text_family, text_sample}};
    metric_collect(&t.sink);
    if (!t.p && !t.oom && !(t.p = calloc(1, 1)))   /* nothing registered */
        t.oom = 1;
    if (t.oom) {
        free(t.p);
        return NULL;
    }
    *len = t.len;
    return t.p;
}
