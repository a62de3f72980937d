/* _engram.c: the CPython extension under the `engram` package: thin types
 * over libengram's public C API (engram/engram.h), nothing more. The
 * Pythonic surface (argument conversion to contiguous arrays, futures,
 * asyncio, dataclasses, torch) is engram/__init__.py's; this file moves
 * bytes and releases the GIL.
 *
 * How:
 * - Rows, tokens and outputs cross as buffers (the buffer protocol): row
 *   ids a C-contiguous buffer of 8-byte items, outputs a writable
 *   C-contiguous buffer of exactly the right size, filled in place by the
 *   library (one copy: the library writes straight into the caller's numpy
 *   array or tensor storage).
 * - Every call that may block (network, hashing, waiting) runs with the GIL
 *   released, under the client's read lock; Client.close takes the write
 *   lock, so a client shared by many threads is never closed under a call.
 *   Locks are taken only with the GIL released, so a thread holding one
 *   never waits for the GIL while another waits for the lock.
 * - Handles (Lookup, Prefetch, Import) keep the buffers they write into
 *   (Py_buffer views, which also pin a numpy array's memory) and a
 *   reference to their client or model until freed, and serialize their
 *   own methods with a mutex, as the C API requires one thread at a time
 *   per handle.
 * - Errors: engram_error becomes an instance of the class registered for
 *   its code by engram/__init__.py (_set_error_classes), built as
 *   cls(message, code_name). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "engram/engram.h"

/* ---- errors --------------------------------------------------------------- */

static PyObject *error_classes; /* dict: int code -> class */
static PyObject *error_base;    /* the class for codes not in the dict */

static PyObject *raise_err(const engram_error *e)
{
    PyObject *cls = NULL;
    if (error_classes) {
        PyObject *key = PyLong_FromLong(e->code);
        cls = key ? PyDict_GetItemWithError(error_classes, key) : NULL;
        Py_XDECREF(key);
        if (!cls && PyErr_Occurred())
            return NULL;
    }
    if (!cls)
        cls = error_base ? error_base : PyExc_RuntimeError;
    PyObject *exc = PyObject_CallFunction(cls, "ss", e->message, engram_status_name(e->code));
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *set_error_classes(PyObject *self, PyObject *args)
{
    PyObject *classes, *base;
    if (!PyArg_ParseTuple(args, "O!O", &PyDict_Type, &classes, &base))
        return NULL;
    Py_XSETREF(error_classes, Py_NewRef(classes));
    Py_XSETREF(error_base, Py_NewRef(base));
    Py_RETURN_NONE;
}

/* ---- buffers -------------------------------------------------------------- */

/* A C-contiguous buffer of 8-byte items (row ids, token ids). */
static int get_u64s(PyObject *o, Py_buffer *b, const char *what)
{
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0)
        return -1;
    if (b->itemsize != 8 || b->len % 8) {
        PyErr_Format(PyExc_TypeError, "%s must hold 8-byte integers (itemsize %zd)", what,
                     b->itemsize);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

/* A writable C-contiguous buffer of exactly `need` bytes. */
static int get_out(PyObject *o, Py_buffer *b, size_t need)
{
    if (PyObject_GetBuffer(o, b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError,
                            "out must be a writable C-contiguous buffer (it is read-only "
                            "or not contiguous)");
        }
        return -1;
    }
    if ((size_t)b->len != need) {
        PyErr_Format(PyExc_ValueError, "out holds %zd bytes; this call writes %zu", b->len,
                     need);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

/* ---- Client ----------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    engram_client *c;
    pthread_rwlock_t lock; /* read: a call in progress; write: close */
    int children;          /* open models and imports (under the GIL) */
} ClientObject;

static PyTypeObject ClientType;

/* Runs `body` (a statement using cl->c) without the GIL, under the read
 * lock; sets `closed` when the client was already closed. */
#define CLIENT_CALL(cl, closed, body)                                         \
    do {                                                                      \
        Py_BEGIN_ALLOW_THREADS                                                \
        pthread_rwlock_rdlock(&(cl)->lock);                                   \
        if ((cl)->c == NULL)                                                  \
            (closed) = 1;                                                     \
        else {                                                                \
            body;                                                             \
        }                                                                     \
        pthread_rwlock_unlock(&(cl)->lock);                                   \
        Py_END_ALLOW_THREADS                                                  \
    } while (0)

static PyObject *closed_error(void)
{
    PyErr_SetString(PyExc_ValueError, "the client is closed");
    return NULL;
}

static int opt_i64(PyObject *kw, const char *key, int64_t *out)
{
    PyObject *v = kw ? PyDict_GetItemString(kw, key) : NULL;
    if (!v || v == Py_None)
        return 0;
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    *out = x;
    return 0;
}

static int opt_str(PyObject *kw, const char *key, const char **out)
{
    PyObject *v = kw ? PyDict_GetItemString(kw, key) : NULL;
    if (!v || v == Py_None)
        return 0;
    *out = PyUnicode_AsUTF8(v);
    return *out ? 0 : -1;
}

/* Client(address, options: dict) with the keys of engram_client_options. */
static int Client_init(ClientObject *self, PyObject *args, PyObject *kwds)
{
    const char *address;
    PyObject *o = NULL;
    if (!PyArg_ParseTuple(args, "s|O!", &address, &PyDict_Type, &o))
        return -1;
    if (self->c) {
        PyErr_SetString(PyExc_RuntimeError, "Client is already open");
        return -1;
    }
    engram_client_options opts;
    engram_client_options_init(&opts);
    int64_t v;
    struct { const char *key; void *field; int is32; } ints[] = {
        {"deadline_ms", &opts.deadline_ms, 0},
        {"max_message_bytes", &opts.max_message_bytes, 1},
        {"max_prefetch_tokens", &opts.max_prefetch_tokens, 0},
        {"version_refresh_ms", &opts.version_refresh_ms, 0},
        {"attempt_timeout_ms", &opts.attempt_timeout_ms, 0},
        {"eject_after_failures", &opts.eject_after_failures, 1},
        {"eject_backoff_ms", &opts.eject_backoff_ms, 0},
        {"hedge_percentile", &opts.hedge_percentile, 1},
        {"hedge_min_ms", &opts.hedge_min_ms, 0},
        {"eject_after_hedge_losses", &opts.eject_after_hedge_losses, 1},
        {"tls_refresh_s", &opts.tls_refresh_s, 1},
        {"prefetch_chunk_rows", &opts.prefetch_chunk_rows, 1},
        {"local", &opts.local, 1},   /* ENGRAM_LOCAL_*: client.py maps the names */
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        v = ints[i].is32 ? *(int32_t *)ints[i].field : *(int64_t *)ints[i].field;
        if (opt_i64(o, ints[i].key, &v))
            return -1;
        if (ints[i].is32) {
            if (v < INT32_MIN || v > INT32_MAX) {
                PyErr_Format(PyExc_OverflowError, "%s = %lld does not fit 32 bits", ints[i].key,
                             (long long)v);
                return -1;
            }
            *(int32_t *)ints[i].field = (int32_t)v;
        } else {
            *(int64_t *)ints[i].field = v;
        }
    }
    if (opt_str(o, "tls_ca_file", &opts.tls_ca_file) ||
        opt_str(o, "tls_cert_file", &opts.tls_cert_file) ||
        opt_str(o, "tls_key_file", &opts.tls_key_file) ||
        opt_str(o, "tls_server_name", &opts.tls_server_name) ||
        opt_str(o, "admin_token", &opts.admin_token))
        return -1;
    engram_error e;
    engram_client *c = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = engram_client_open(address, &opts, &c, &e);
    Py_END_ALLOW_THREADS
    if (rc) {
        raise_err(&e);
        return -1;
    }
    self->c = c;
    return 0;
}

static PyObject *Client_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ClientObject *self = (ClientObject *)type->tp_alloc(type, 0);
    if (self)
        pthread_rwlock_init(&self->lock, NULL);
    return (PyObject *)self;
}

static void client_close(ClientObject *self)
{
    engram_client *c;
    Py_BEGIN_ALLOW_THREADS
    pthread_rwlock_wrlock(&self->lock);
    c = self->c;
    self->c = NULL;
    pthread_rwlock_unlock(&self->lock);
    engram_client_close(c);
    Py_END_ALLOW_THREADS
}

static PyObject *Client_close(ClientObject *self, PyObject *unused)
{
    if (self->children) {
        PyErr_Format(PyExc_RuntimeError, "close the client's %d open models and imports first",
                     self->children);
        return NULL;
    }
    client_close(self);
    Py_RETURN_NONE;
}

static void Client_dealloc(ClientObject *self)
{
    /* Children hold a reference, so none is left here. */
    if (self->c)
        client_close(self);
    pthread_rwlock_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Client_closed(ClientObject *self, void *unused)
{
    return PyBool_FromLong(self->c == NULL);
}

/* lookup_into(table, rows, out) -> (row_bytes, version): fills out, whose
 * size must be exactly the reply's (the caller knows row_bytes). */
static PyObject *Client_lookup_into(ClientObject *self, PyObject *args)
{
    const char *table;
    PyObject *rows_o, *out_o;
    unsigned long long rb_expect;
    if (!PyArg_ParseTuple(args, "sOOK", &table, &rows_o, &out_o, &rb_expect))
        return NULL;
    Py_buffer rows, out;
    if (get_u64s(rows_o, &rows, "rows"))
        return NULL;
    size_t n = (size_t)rows.len / 8;
    if (get_out(out_o, &out, n * rb_expect)) {
        PyBuffer_Release(&rows);
        return NULL;
    }
    engram_error e;
    uint32_t rb = 0;
    uint64_t ver = 0;
    int rc = 0, closed = 0;
    CLIENT_CALL(self, closed, rc = engram_lookup_sync(self->c, table, rows.buf, n, out.buf,
                                                     (size_t)out.len, &rb, &ver, &e));
    PyBuffer_Release(&rows);
    PyBuffer_Release(&out);
    if (closed)
        return closed_error();
    if (rc)
        return raise_err(&e);
    return Py_BuildValue("IK", rb, (unsigned long long)ver);
}

/* ---- table info as dicts ------------------------------------------------------ */

static const char *version_state(int s)
{
    return s == ENGRAM_VERSION_ACTIVE ? "active" : s == ENGRAM_VERSION_RETAINED ? "retained"
         : s == ENGRAM_VERSION_STAGED ? "staged" : "unknown";
}

static PyObject *table_dict(const engram_table_info *t)
{
    PyObject *vers = PyList_New(0);
    if (!vers)
        return NULL;
    for (uint32_t i = 0; i < t->n_versions && i < ENGRAM_MAX_VERSIONS; i++) {
        PyObject *v = Py_BuildValue("{sKsssIsKsK}", "version",
                                    (unsigned long long)t->versions[i].version, "state",
                                    version_state(t->versions[i].state), "checksum",
                                    t->versions[i].checksum, "local_rows",
                                    (unsigned long long)t->versions[i].local_rows, "xxh3",
                                    (unsigned long long)t->versions[i].xxh3);
        if (!v || PyList_Append(vers, v)) {
            Py_XDECREF(v);
            Py_DECREF(vers);
            return NULL;
        }
        Py_DECREF(v);
    }
    return Py_BuildValue("{sssKsIsIsssKsIsKsOsKsKsIsIsN}", "name", t->name, "rows",
                         (unsigned long long)t->rows, "row_bytes", t->row_bytes, "dim", t->dim,
                         "dtype", t->dtype, "version", (unsigned long long)t->version,
                         "checksum", t->checksum, "xxh3", (unsigned long long)t->xxh3,
                         "resident", t->resident ? Py_True : Py_False, "created_unix_ms",
                         (unsigned long long)t->created_unix_ms, "local_rows",
                         (unsigned long long)t->local_rows, "shard_index", t->shard_index,
                         "shard_count", t->shard_count, "versions", vers);
}

static PyObject *Client_table(ClientObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    engram_table_info t;
    engram_error e;
    int rc = 0, closed = 0;
    CLIENT_CALL(self, closed, rc = engram_table_get(self->c, name, &t, &e));
    if (closed)
        return closed_error();
    return rc ? raise_err(&e) : table_dict(&t);
}

static PyObject *Client_tables(ClientObject *self, PyObject *unused)
{
    engram_table_info *t = NULL;
    size_t n = 0;
    engram_error e;
    int rc = 0, closed = 0;
    CLIENT_CALL(self, closed, rc = engram_table_list(self->c, &t, &n, &e));
    if (closed)
        return closed_error();
    if (rc)
        return raise_err(&e);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *d = table_dict(&t[i]);
        if (!d) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, d);
    }
    engram_free(t);
    return list;
}

static PyObject *Client_stats_json(ClientObject *self, PyObject *unused)
{
    char *json = NULL;
    engram_error e;
    int rc = 0, closed = 0;
    CLIENT_CALL(self, closed, rc = engram_stats_json(self->c, &json, &e));
    if (closed)
        return closed_error();
    if (rc)
        return raise_err(&e);
    PyObject *s = PyUnicode_FromString(json);
    engram_free(json);
    return s;
}

static PyObject *Client_health(ClientObject *self, PyObject *args)
{
    const char *service = NULL;
    if (!PyArg_ParseTuple(args, "|z", &service))
        return NULL;
    int serving = 0, rc = 0, closed = 0;
    engram_error e;
    CLIENT_CALL(self, closed, rc = engram_health_check(self->c, service, &serving, &e));
    if (closed)
        return closed_error();
    return rc ? raise_err(&e) : PyBool_FromLong(serving == ENGRAM_HEALTH_SERVING);
}

static PyObject *manifest_dict(const engram_manifest_info *m)
{
    return Py_BuildValue("{sssKsIsIsIsssIsssK}", "name", m->name, "version",
                         (unsigned long long)m->version, "n_layers", m->n_layers, "dim", m->dim,
                         "row_bytes", m->row_bytes, "dtype", m->dtype, "n_missing", m->n_missing,
                         "missing_tables", m->missing_tables, "updated_unix_ms",
                         (unsigned long long)m->updated_unix_ms);
}

static PyObject *Client_manifest_put(ClientObject *self, PyObject *args)
{
    const char *json;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "s#", &json, &len))
        return NULL;
    engram_manifest_info m;
    engram_error e;
    int rc = 0, closed = 0;
    CLIENT_CALL(self, closed, rc = engram_manifest_put(self->c, json, (size_t)len, &m, &e));
    if (closed)
        return closed_error();
    return rc ? raise_err(&e) : manifest_dict(&m);
}

static PyObject *Client_manifest_get(ClientObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    char *json = NULL;
    uint64_t ver = 0;
    engram_error e;
    int rc = 0, closed = 0;
    CLIENT_CALL(self, closed, rc = engram_manifest_get(self->c, name, &json, &ver, &e));
    if (closed)
        return closed_error();
    if (rc)
        return raise_err(&e);
    PyObject *r = Py_BuildValue("sK", json, (unsigned long long)ver);
    engram_free(json);
    return r;
}

static PyObject *Client_manifests(ClientObject *self, PyObject *unused)
{
    engram_manifest_info *m = NULL;
    size_t n = 0;
    engram_error e;
    int rc = 0, closed = 0;
    CLIENT_CALL(self, closed, rc = engram_manifest_list(self->c, &m, &n, &e));
    if (closed)
        return closed_error();
    if (rc)
        return raise_err(&e);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *d = manifest_dict(&m[i]);
        if (!d) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, d);
    }
    engram_free(m);
    return list;
}

static PyObject *Client_verify(ClientObject *self, PyObject *args)
{
    const char *table;
    unsigned long long version = 0;
    if (!PyArg_ParseTuple(args, "s|K", &table, &version))
        return NULL;
    engram_verify_result r;
    engram_error e;
    int rc = 0, closed = 0;
    CLIENT_CALL(self, closed,
                rc = engram_table_verify(self->c, table, version, NULL, NULL, &r, &e));
    if (closed)
        return closed_error();
    if (rc)
        return raise_err(&e);
    return Py_BuildValue("{sssKsKsKsKsIsIsssIsIsKsIsKsIsOsOss}", "table", r.table, "version",
                         (unsigned long long)r.version, "rows_checked",
                         (unsigned long long)r.rows_checked, "local_rows",
                         (unsigned long long)r.local_rows, "rows", (unsigned long long)r.rows,
                         "row_bytes", r.row_bytes, "dim", r.dim, "dtype", r.dtype,
                         "shard_index", r.shard_index, "shard_count", r.shard_count, "xxh3",
                         (unsigned long long)r.xxh3, "crc32", r.crc32, "stored_xxh3",
                         (unsigned long long)r.stored_xxh3, "stored_crc32", r.stored_crc32,
                         "resident", r.resident ? Py_True : Py_False, "match",
                         r.match ? Py_True : Py_False, "problem", r.problem);
}

/* ---- Lookup: one asynchronous lookup ----------------------------------------- */

typedef struct {
    PyObject_HEAD
    ClientObject *client;
    engram_lookup *h;
    Py_buffer out;
    int has_out;
    pthread_mutex_t mu;   /* one method at a time, as the C API requires */
} LookupObject;

static PyTypeObject LookupType;

/* The handle is read and cleared only under mu, so a free from one thread
 * waits for a wait in progress on another (at most its timeout) instead of
 * freeing under it. */
static void lookup_release(LookupObject *self)
{
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    engram_lookup_free(self->h);   /* cancels and lets go of out */
    self->h = NULL;
    pthread_mutex_unlock(&self->mu);
    Py_END_ALLOW_THREADS
    if (self->has_out) {
        PyBuffer_Release(&self->out);
        self->has_out = 0;
    }
}

/* lookup_start(table, rows, out, row_bytes) -> Lookup */
static PyObject *Client_lookup_start(ClientObject *self, PyObject *args)
{
    const char *table;
    PyObject *rows_o, *out_o;
    unsigned long long rb;
    if (!PyArg_ParseTuple(args, "sOOK", &table, &rows_o, &out_o, &rb))
        return NULL;
    LookupObject *l = PyObject_New(LookupObject, &LookupType);
    if (!l)
        return NULL;
    l->client = (ClientObject *)Py_NewRef(self);
    l->h = NULL;
    l->has_out = 0;
    pthread_mutex_init(&l->mu, NULL);
    Py_buffer rows;
    if (get_u64s(rows_o, &rows, "rows")) {
        Py_DECREF(l);
        return NULL;
    }
    size_t n = (size_t)rows.len / 8;
    if (get_out(out_o, &l->out, n * rb)) {
        PyBuffer_Release(&rows);
        Py_DECREF(l);
        return NULL;
    }
    l->has_out = 1;
    engram_error e;
    int rc = 0, closed = 0;
    engram_lookup *h = NULL;
    CLIENT_CALL(self, closed, rc = engram_lookup_start(self->c, table, rows.buf, n, l->out.buf,
                                                      (size_t)l->out.len, &h, &e));
    PyBuffer_Release(&rows);
    l->h = h;
    if (closed || rc) {
        Py_DECREF(l);
        return closed ? closed_error() : raise_err(&e);
    }
    return (PyObject *)l;
}

/* wait(timeout_ms=-1) -> (row_bytes, version), or None when the timeout
 * passed; raises the lookup's error. */
static PyObject *Lookup_wait(LookupObject *self, PyObject *args)
{
    long long timeout = -1;
    if (!PyArg_ParseTuple(args, "|L", &timeout))
        return NULL;
    engram_error e;
    int rc, freed = 0;
    uint32_t rb = 0;
    uint64_t ver = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    if (!self->h)
        freed = 1;
    else if ((rc = engram_lookup_wait(self->h, timeout, &e)) == ENGRAM_OK)
        engram_lookup_result(self->h, &rb, &ver);
    pthread_mutex_unlock(&self->mu);
    Py_END_ALLOW_THREADS
    if (freed) {
        PyErr_SetString(PyExc_ValueError, "the lookup was freed");
        return NULL;
    }
    if (rc == ENGRAM_TIMEOUT)
        Py_RETURN_NONE;
    if (rc)
        return raise_err(&e);
    return Py_BuildValue("IK", rb, (unsigned long long)ver);
}

static PyObject *Lookup_free(LookupObject *self, PyObject *unused)
{
    lookup_release(self);
    Py_RETURN_NONE;
}

static void Lookup_dealloc(LookupObject *self)
{
    lookup_release(self);
    pthread_mutex_destroy(&self->mu);
    Py_XDECREF(self->client);
    PyObject_Free(self);
}

/* ---- Import ------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    ClientObject *client;
    engram_import *imp;
    uint32_t row_bytes;
} ImportObject;

static PyTypeObject ImportType;

static void import_done(ImportObject *self)
{
    if (self->client) {
        self->client->children--;
        Py_CLEAR(self->client);
    }
}

/* import_begin(table, rows, dim, dtype, row_bytes) -> Import */
static PyObject *Client_import_begin(ClientObject *self, PyObject *args)
{
    const char *table, *dtype;
    unsigned long long rows;
    unsigned int dim, rb;
    if (!PyArg_ParseTuple(args, "sKIsI", &table, &rows, &dim, &dtype, &rb))
        return NULL;
    engram_error e;
    engram_import *imp = NULL;
    int rc = 0, closed = 0;
    CLIENT_CALL(self, closed,
                rc = engram_import_begin(self->c, table, rows, dim, dtype, &imp, &e));
    if (closed)
        return closed_error();
    if (rc)
        return raise_err(&e);
    ImportObject *o = PyObject_New(ImportObject, &ImportType);
    if (!o) {
        engram_import_abort(imp);
        return NULL;
    }
    o->client = (ClientObject *)Py_NewRef(self);
    o->imp = imp;
    o->row_bytes = rb;
    self->children++;
    return (PyObject *)o;
}

static PyObject *Import_write(ImportObject *self, PyObject *args)
{
    unsigned long long start;
    PyObject *data_o;
    if (!PyArg_ParseTuple(args, "KO", &start, &data_o))
        return NULL;
    if (!self->imp) {
        PyErr_SetString(PyExc_ValueError, "the import is finished");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(data_o, &b, PyBUF_C_CONTIGUOUS) != 0)
        return NULL;
    engram_error e;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = engram_import_write(self->imp, start, b.buf, (size_t)b.len, &e);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    if (rc)
        return raise_err(&e);
    Py_RETURN_NONE;
}

static PyObject *Import_finish(ImportObject *self, PyObject *unused)
{
    if (!self->imp) {
        PyErr_SetString(PyExc_ValueError, "the import is finished");
        return NULL;
    }
    engram_table_info t;
    engram_error e;
    int rc;
    engram_import *imp = self->imp;
    self->imp = NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = engram_import_finish(imp, &t, &e);
    Py_END_ALLOW_THREADS
    import_done(self);
    return rc ? raise_err(&e) : table_dict(&t);
}

static PyObject *Import_abort(ImportObject *self, PyObject *unused)
{
    engram_import *imp = self->imp;
    self->imp = NULL;
    if (imp) {
        Py_BEGIN_ALLOW_THREADS
        engram_import_abort(imp);
        Py_END_ALLOW_THREADS
    }
    import_done(self);
    Py_RETURN_NONE;
}

static void Import_dealloc(ImportObject *self)
{
    if (self->imp)
        engram_import_abort(self->imp);
    self->imp = NULL;
    import_done(self);
    PyObject_Free(self);
}

/* ---- Model ----------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    ClientObject *client;
    engram_model *m;
    engram_model_info info;
    int prefetches;   /* live Prefetch handles (under the GIL) */
} ModelObject;

static PyTypeObject ModelType;

static PyObject *Client_model_open(ClientObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    engram_error e;
    engram_model *m = NULL;
    int rc = 0, closed = 0;
    CLIENT_CALL(self, closed, rc = engram_model_open(self->c, name, &m, &e));
    if (closed)
        return closed_error();
    if (rc)
        return raise_err(&e);
    ModelObject *o = PyObject_New(ModelObject, &ModelType);
    if (!o) {
        engram_model_close(m);
        return NULL;
    }
    o->client = (ClientObject *)Py_NewRef(self);
    o->m = m;
    o->prefetches = 0;
    engram_model_get_info(m, &o->info);
    self->children++;
    return (PyObject *)o;
}

static void model_close(ModelObject *self)
{
    engram_model *m = self->m;
    self->m = NULL;
    if (m) {
        Py_BEGIN_ALLOW_THREADS
        engram_model_close(m);
        Py_END_ALLOW_THREADS
        self->client->children--;
    }
}

static PyObject *Model_close(ModelObject *self, PyObject *unused)
{
    if (self->prefetches) {
        PyErr_Format(PyExc_RuntimeError, "free the model's %d prefetches first",
                     self->prefetches);
        return NULL;
    }
    model_close(self);
    Py_RETURN_NONE;
}

static void Model_dealloc(ModelObject *self)
{
    model_close(self);
    Py_XDECREF(self->client);
    PyObject_Free(self);
}

static PyObject *model_closed(void)
{
    PyErr_SetString(PyExc_ValueError, "the model is closed");
    return NULL;
}

static PyObject *Model_info(ModelObject *self, PyObject *unused)
{
    const engram_model_info *i = &self->info;
    PyObject *layers = PyTuple_New(i->n_layers);
    for (uint32_t k = 0; layers && k < i->n_layers; k++)
        PyTuple_SET_ITEM(layers, k, PyLong_FromLongLong(i->layer_ids[k]));
    if (!layers)
        return NULL;
    return Py_BuildValue("{sssKsNsIsIsIsIsssL}", "name", i->name, "manifest_version",
                         (unsigned long long)i->manifest_version, "layer_ids", layers,
                         "max_ngram", i->max_ngram, "heads", i->heads, "dim", i->dim,
                         "row_bytes", i->row_bytes, "dtype", i->dtype, "pad_id",
                         (long long)i->pad_id);
}

/* hash(layer, tokens, batch, seq_len, history or None, out) */
static PyObject *Model_hash(ModelObject *self, PyObject *args)
{
    long long layer;
    PyObject *tok_o, *hist_o, *out_o;
    Py_ssize_t batch, seq;
    if (!PyArg_ParseTuple(args, "LOnnOO", &layer, &tok_o, &batch, &seq, &hist_o, &out_o))
        return NULL;
    if (!self->m)
        return model_closed();
    Py_buffer tok, hist = {0}, out;
    if (get_u64s(tok_o, &tok, "tokens"))
        return NULL;
    if (hist_o != Py_None && get_u64s(hist_o, &hist, "history")) {
        PyBuffer_Release(&tok);
        return NULL;
    }
    size_t need = (size_t)batch * (size_t)seq * self->info.heads * 8;
    if (get_out(out_o, &out, need)) {
        PyBuffer_Release(&tok);
        if (hist_o != Py_None)
            PyBuffer_Release(&hist);
        return NULL;
    }
    engram_error e;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = engram_model_hash(self->m, layer, tok.buf, (size_t)batch, (size_t)seq,
                           hist_o != Py_None ? hist.buf : NULL, out.buf, &e);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&tok);
    if (hist_o != Py_None)
        PyBuffer_Release(&hist);
    PyBuffer_Release(&out);
    if (rc)
        return raise_err(&e);
    Py_RETURN_NONE;
}

static PyObject *Model_tp_heads(ModelObject *self, PyObject *args)
{
    unsigned int tp, rank;
    if (!PyArg_ParseTuple(args, "II", &tp, &rank))
        return NULL;
    if (!self->m)
        return model_closed();
    uint32_t heads[4096];
    size_t n = engram_model_tp_heads(self->m, tp, rank, heads, 4096);
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    for (size_t i = 0; t && i < n; i++)
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, PyLong_FromUnsignedLong(heads[i]));
    return t;
}

/* ---- Prefetch ----------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    ModelObject *model;
    engram_prefetch *h;
    Py_buffer out;
    int has_out;
    pthread_mutex_t mu;
} PrefetchObject;

static PyTypeObject PrefetchType;

/* As lookup_release: the handle is touched only under mu. */
static void prefetch_release(PrefetchObject *self)
{
    int had;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    had = self->h != NULL;
    engram_prefetch_free(self->h);
    self->h = NULL;
    pthread_mutex_unlock(&self->mu);
    Py_END_ALLOW_THREADS
    if (had)
        self->model->prefetches--;
    if (self->has_out) {
        PyBuffer_Release(&self->out);
        self->has_out = 0;
    }
}

/* A sequence of ints into a malloc'd array (layers, heads). */
static int64_t *int_seq(PyObject *o, size_t *n, const char *what)
{
    PyObject *seq = PySequence_Fast(o, what);
    if (!seq)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    int64_t *v = PyMem_Malloc(((size_t)k + 1) * sizeof *v);
    for (Py_ssize_t i = 0; v && i < k; i++) {
        v[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v[i] == -1 && PyErr_Occurred()) {
            PyMem_Free(v);
            v = NULL;
        }
    }
    Py_DECREF(seq);
    if (!v && !PyErr_Occurred())
        PyErr_NoMemory();
    *n = (size_t)k;
    return v;
}

/* Fills req from (layers, tokens, batch, seq_len, history, heads, flags);
 * the buffers are released by the caller. */
typedef struct {
    int64_t *layers, *heads64;
    uint32_t *heads;
    Py_buffer tok, hist;
    int has_tok, has_hist;
} pf_args;

static void pf_args_free(pf_args *a)
{
    PyMem_Free(a->layers);
    PyMem_Free(a->heads64);
    PyMem_Free(a->heads);
    if (a->has_tok)
        PyBuffer_Release(&a->tok);
    if (a->has_hist)
        PyBuffer_Release(&a->hist);
}

static int pf_parse(PyObject *args, engram_prefetch_request *r, pf_args *a, PyObject **out_o)
{
    PyObject *layers_o, *tok_o, *hist_o, *heads_o;
    Py_ssize_t batch, seq;
    unsigned int flags;
    if (!PyArg_ParseTuple(args, "OOnnOOIO", &layers_o, &tok_o, &batch, &seq, &hist_o, &heads_o,
                          &flags, out_o))
        return -1;
    engram_prefetch_request_init(r);
    size_t nl = 0, nh = 0;
    if (!(a->layers = int_seq(layers_o, &nl, "layers must be a sequence of ints")))
        return -1;
    if (heads_o != Py_None) {
        if (!(a->heads64 = int_seq(heads_o, &nh, "heads must be a sequence of ints")))
            return -1;
        a->heads = PyMem_Malloc((nh + 1) * sizeof *a->heads);
        if (!a->heads) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = 0; i < nh; i++) {
            if (a->heads64[i] < 0 || a->heads64[i] > UINT32_MAX) {
                PyErr_Format(PyExc_ValueError, "head %lld is out of range",
                             (long long)a->heads64[i]);
                return -1;
            }
            a->heads[i] = (uint32_t)a->heads64[i];
        }
        r->heads = a->heads;
        r->n_heads = nh;
    }
    if (get_u64s(tok_o, &a->tok, "tokens"))
        return -1;
    a->has_tok = 1;
    if (hist_o != Py_None) {
        if (get_u64s(hist_o, &a->hist, "history"))
            return -1;
        a->has_hist = 1;
        r->history = a->hist.buf;
    }
    r->layer_ids = a->layers;
    r->n_layers = nl;
    r->tokens = a->tok.buf;
    r->batch = (size_t)batch;
    r->seq_len = (size_t)seq;
    r->flags = flags;
    return 0;
}

/* out_bytes(layers, tokens, batch, seq_len, history, heads, flags, None) */
static PyObject *Model_out_bytes(ModelObject *self, PyObject *args)
{
    if (!self->m)
        return model_closed();
    engram_prefetch_request r;
    pf_args a = {0};
    PyObject *out_o;
    if (pf_parse(args, &r, &a, &out_o)) {
        pf_args_free(&a);
        return NULL;
    }
    size_t n = engram_prefetch_out_bytes(self->m, &r);
    pf_args_free(&a);
    return PyLong_FromSize_t(n);
}

/* prefetch_start(layers, tokens, batch, seq_len, history, heads, flags, out) */
static PyObject *Model_prefetch_start(ModelObject *self, PyObject *args)
{
    if (!self->m)
        return model_closed();
    engram_prefetch_request r;
    pf_args a = {0};
    PyObject *out_o;
    if (pf_parse(args, &r, &a, &out_o)) {
        pf_args_free(&a);
        return NULL;
    }
    size_t need = engram_prefetch_out_bytes(self->m, &r);
    PrefetchObject *p = PyObject_New(PrefetchObject, &PrefetchType);
    if (!p) {
        pf_args_free(&a);
        return NULL;
    }
    p->model = (ModelObject *)Py_NewRef(self);
    p->h = NULL;
    p->has_out = 0;
    pthread_mutex_init(&p->mu, NULL);
    if (need == 0 || get_out(out_o, &p->out, need)) {
        if (need == 0 && !PyErr_Occurred()) {
            /* An invalid request: let start name what is wrong. */
            engram_error e;
            engram_prefetch *h = NULL;
            r.out = NULL;
            r.out_cap = 0;
            int rc = engram_prefetch_start(self->m, &r, &h, &e);
            engram_prefetch_free(h);
            if (rc)
                raise_err(&e);
            else
                PyErr_SetString(PyExc_ValueError, "the prefetch has no output");
        }
        pf_args_free(&a);
        Py_DECREF(p);
        return NULL;
    }
    p->has_out = 1;
    r.out = p->out.buf;
    r.out_cap = (size_t)p->out.len;
    engram_error e;
    int rc;
    engram_prefetch *h = NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = engram_prefetch_start(self->m, &r, &h, &e);
    Py_END_ALLOW_THREADS
    pf_args_free(&a);
    if (rc) {
        Py_DECREF(p);
        return raise_err(&e);
    }
    p->h = h;
    self->prefetches++;
    return (PyObject *)p;
}

static PyObject *prefetch_freed(void)
{
    PyErr_SetString(PyExc_ValueError, "the prefetch was freed");
    return NULL;
}

enum { PF_WAIT, PF_WAIT_LAYER, PF_POLL, PF_CANCEL };

/* One handle operation without the GIL, under mu; -1 when freed. */
static int prefetch_op(PrefetchObject *self, int op, long long layer, long long timeout,
                       engram_error *e)
{
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    if (!self->h)
        rc = -1;
    else if (op == PF_WAIT)
        rc = engram_prefetch_wait(self->h, timeout, e);
    else if (op == PF_WAIT_LAYER)
        rc = engram_prefetch_wait_layer(self->h, layer, timeout, e);
    else if (op == PF_POLL)
        rc = engram_prefetch_poll(self->h);
    else
        engram_prefetch_cancel(self->h);
    pthread_mutex_unlock(&self->mu);
    Py_END_ALLOW_THREADS
    return rc;
}

static PyObject *wait_result(int rc, engram_error *e)
{
    if (rc < 0)
        return prefetch_freed();
    if (rc == ENGRAM_TIMEOUT)
        Py_RETURN_FALSE;
    if (rc)
        return raise_err(e);
    Py_RETURN_TRUE;
}

/* wait(timeout_ms=-1) -> True when done, False when the timeout passed */
static PyObject *Prefetch_wait(PrefetchObject *self, PyObject *args)
{
    long long timeout = -1;
    if (!PyArg_ParseTuple(args, "|L", &timeout))
        return NULL;
    engram_error e;
    return wait_result(prefetch_op(self, PF_WAIT, 0, timeout, &e), &e);
}

static PyObject *Prefetch_wait_layer(PrefetchObject *self, PyObject *args)
{
    long long layer, timeout = -1;
    if (!PyArg_ParseTuple(args, "L|L", &layer, &timeout))
        return NULL;
    engram_error e;
    return wait_result(prefetch_op(self, PF_WAIT_LAYER, layer, timeout, &e), &e);
}

static PyObject *Prefetch_poll(PrefetchObject *self, PyObject *unused)
{
    int rc = prefetch_op(self, PF_POLL, 0, 0, NULL);
    return rc < 0 ? prefetch_freed() : PyBool_FromLong(rc);
}

static PyObject *Prefetch_cancel(PrefetchObject *self, PyObject *unused)
{
    prefetch_op(self, PF_CANCEL, 0, 0, NULL);
    Py_RETURN_NONE;
}

static PyObject *Prefetch_free(PrefetchObject *self, PyObject *unused)
{
    prefetch_release(self);
    Py_RETURN_NONE;
}

static void Prefetch_dealloc(PrefetchObject *self)
{
    prefetch_release(self);
    pthread_mutex_destroy(&self->mu);
    Py_XDECREF(self->model);
    PyObject_Free(self);
}

/* ---- module functions ------------------------------------------------------------- */

/* dequant(rows, n, dim, out, to_bf16) */
static PyObject *mod_dequant(PyObject *self, PyObject *args)
{
    PyObject *rows_o, *out_o;
    Py_ssize_t n;
    unsigned int dim;
    int bf16;
    if (!PyArg_ParseTuple(args, "OnIOp", &rows_o, &n, &dim, &out_o, &bf16))
        return NULL;
    Py_buffer rows, out;
    if (PyObject_GetBuffer(rows_o, &rows, PyBUF_C_CONTIGUOUS) != 0)
        return NULL;
    size_t row_bytes = (size_t)dim + dim / 32;
    if ((size_t)rows.len != (size_t)n * row_bytes) {
        PyErr_Format(PyExc_ValueError, "rows hold %zd bytes; %zd rows of dim %u take %zu",
                     rows.len, n, dim, (size_t)n * row_bytes);
        PyBuffer_Release(&rows);
        return NULL;
    }
    if (get_out(out_o, &out, (size_t)n * dim * (bf16 ? 2 : 4))) {
        PyBuffer_Release(&rows);
        return NULL;
    }
    engram_error e;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = bf16 ? engram_dequant_bf16(rows.buf, (size_t)n, dim, out.buf, &e)
              : engram_dequant_f32(rows.buf, (size_t)n, dim, out.buf, &e);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&rows);
    PyBuffer_Release(&out);
    if (rc)
        return raise_err(&e);
    Py_RETURN_NONE;
}

static PyObject *mod_version(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(engram_version());
}

static PyObject *mod_status_name(PyObject *self, PyObject *args)
{
    int code;
    if (!PyArg_ParseTuple(args, "i", &code))
        return NULL;
    return PyUnicode_FromString(engram_status_name(code));
}

/* ---- type tables --------------------------------------------------------------------- */

static PyMethodDef Client_methods[] = {
    {"close", (PyCFunction)Client_close, METH_NOARGS, "Closes the client."},
    {"lookup_into", (PyCFunction)Client_lookup_into, METH_VARARGS, NULL},
    {"lookup_start", (PyCFunction)Client_lookup_start, METH_VARARGS, NULL},
    {"table", (PyCFunction)Client_table, METH_VARARGS, NULL},
    {"tables", (PyCFunction)Client_tables, METH_NOARGS, NULL},
    {"stats_json", (PyCFunction)Client_stats_json, METH_NOARGS, NULL},
    {"health", (PyCFunction)Client_health, METH_VARARGS, NULL},
    {"manifest_put", (PyCFunction)Client_manifest_put, METH_VARARGS, NULL},
    {"manifest_get", (PyCFunction)Client_manifest_get, METH_VARARGS, NULL},
    {"manifests", (PyCFunction)Client_manifests, METH_NOARGS, NULL},
    {"verify", (PyCFunction)Client_verify, METH_VARARGS, NULL},
    {"import_begin", (PyCFunction)Client_import_begin, METH_VARARGS, NULL},
    {"model_open", (PyCFunction)Client_model_open, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Client_getset[] = {
    {"closed", (getter)Client_closed, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ClientType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engram._engram.Client",
    .tp_basicsize = sizeof(ClientObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A libengram client (engram_client); use engram.Client.",
    .tp_new = Client_new,
    .tp_init = (initproc)Client_init,
    .tp_dealloc = (destructor)Client_dealloc,
    .tp_methods = Client_methods,
    .tp_getset = Client_getset,
};

static PyMethodDef Lookup_methods[] = {
    {"wait", (PyCFunction)Lookup_wait, METH_VARARGS, NULL},
    {"free", (PyCFunction)Lookup_free, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LookupType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engram._engram.Lookup",
    .tp_basicsize = sizeof(LookupObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Lookup_dealloc,
    .tp_methods = Lookup_methods,
};

static PyMethodDef Import_methods[] = {
    {"write", (PyCFunction)Import_write, METH_VARARGS, NULL},
    {"finish", (PyCFunction)Import_finish, METH_NOARGS, NULL},
    {"abort", (PyCFunction)Import_abort, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ImportType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engram._engram.Import",
    .tp_basicsize = sizeof(ImportObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Import_dealloc,
    .tp_methods = Import_methods,
};

static PyMethodDef Model_methods[] = {
    {"close", (PyCFunction)Model_close, METH_NOARGS, NULL},
    {"info", (PyCFunction)Model_info, METH_NOARGS, NULL},
    {"hash", (PyCFunction)Model_hash, METH_VARARGS, NULL},
    {"tp_heads", (PyCFunction)Model_tp_heads, METH_VARARGS, NULL},
    {"out_bytes", (PyCFunction)Model_out_bytes, METH_VARARGS, NULL},
    {"prefetch_start", (PyCFunction)Model_prefetch_start, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engram._engram.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
};

static PyMethodDef Prefetch_methods[] = {
    {"wait", (PyCFunction)Prefetch_wait, METH_VARARGS, NULL},
    {"wait_layer", (PyCFunction)Prefetch_wait_layer, METH_VARARGS, NULL},
    {"poll", (PyCFunction)Prefetch_poll, METH_NOARGS, NULL},
    {"cancel", (PyCFunction)Prefetch_cancel, METH_NOARGS, NULL},
    {"free", (PyCFunction)Prefetch_free, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PrefetchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engram._engram.Prefetch",
    .tp_basicsize = sizeof(PrefetchObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Prefetch_dealloc,
    .tp_methods = Prefetch_methods,
};

static PyMethodDef module_methods[] = {
    {"_set_error_classes", set_error_classes, METH_VARARGS, NULL},
    {"dequant", mod_dequant, METH_VARARGS, NULL},
    {"version", mod_version, METH_NOARGS, "libengram's version string."},
    {"status_name", mod_status_name, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "engram._engram",
    "Thin types over libengram (engram/engram.h); use the engram package.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__engram(void)
{
    PyTypeObject *types[] = {&ClientType, &LookupType, &ImportType, &ModelType, &PrefetchType};
    const char *names[] = {"Client", "Lookup", "Import", "Model", "Prefetch"};
    for (size_t i = 0; i < 5; i++)
        if (PyType_Ready(types[i]) < 0)
            return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    for (size_t i = 0; i < 5; i++)
        if (PyModule_AddObjectRef(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    if (PyModule_AddIntConstant(m, "PREFETCH_HASH_ASYNC", ENGRAM_PREFETCH_HASH_ASYNC) ||
        PyModule_AddIntConstant(m, "PREFETCH_DEQUANT_BF16", ENGRAM_PREFETCH_DEQUANT_BF16)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
