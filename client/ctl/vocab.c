/* vocab.c: builds the Engram compression table from a HuggingFace
 * tokenizer.json (see vocab.h for the two rules, DeepSeek-V4.1's and the
 * Engram demo's).
 *
 * How: jansson loads the file; the ids are gathered into a flat array
 * (holes stay empty); each id is byte-level decoded (GPT-2 bytes_to_unicode
 * reversed, then lossy UTF-8 with maximal-subpart U+FFFD replacement),
 * normalised with utf8proc (NFKC, NFD, then one pass that drops combining
 * marks, lowercases, collapses [ \t\r\n]+ and a final White_Space strip), and
 * the key is numbered through an open-addressing hash table in order of first
 * appearance. The demo rule's clean-up is a plain replace pass over the
 * decoded text. The table is streamed out as {"lookup_table": [...]}. */
#include "vocab.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

/* Highest id accepted: far above any real vocabulary (~260k), low enough
 * that a corrupt id cannot ask for gigabytes. */
#define VOCAB_MAX_ID ((1 << 24) - 1)

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- growable byte buffer ------------------------------------------------ */

typedef struct buf {
    char *p;
    size_t len, cap;
    bool oom;
} buf;

static void buf_put(buf *b, const void *src, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 32;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_put_cp(buf *b, int32_t cp)
{
    utf8proc_uint8_t tmp[4];
    buf_put(b, tmp, (size_t)utf8proc_encode_char(cp, tmp));
}

/* Returns the NUL-terminated contents (an empty buffer gives "") or NULL. */
static char *buf_finish(buf *b, size_t *out_len)
{
    if (!b->oom && b->p == NULL)
        buf_put(b, "", 0);
    if (b->oom) {
        free(b->p);
        return NULL;
    }
    *out_len = b->len;
    return b->p;
}

/* ---- byte-level decode --------------------------------------------------- */

/* GPT-2 bytes_to_unicode keeps bytes 33..126, 161..172 and 174..255 as the
 * same code point; every other byte b, in increasing order, becomes 256 + n
 * where n counts the bytes skipped before it. */
static bool byte_kept(int b)
{
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

/* Maps a code point back to its byte; -1 when it is not in the table. */
static int unicode_to_byte(int32_t cp)
{
    if (cp >= 0 && cp < 256)
        return byte_kept(cp) ? cp : -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        if (byte_kept(b))
            continue;
        if (cp == 256 + n)
            return b;
        n++;
    }
    return -1;
}

/* Maps token chars to bytes into b; false if a char is outside the table. */
static bool token_to_bytes(const char *token, size_t len, buf *b)
{
    const utf8proc_uint8_t *s = (const utf8proc_uint8_t *)token;
    size_t i = 0;
    while (i < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(len - i), &cp);
        int byte = k > 0 ? unicode_to_byte(cp) : -1;
        if (byte < 0)
            return false;
        unsigned char c = (unsigned char)byte;
        buf_put(b, &c, 1);
        i += (size_t)k;
    }
    return true;
}

/* Length of the valid UTF-8 prefix at s[0..n) that starts a sequence: the
 * whole sequence when complete, else the maximal subpart (0 for a byte that
 * can never start one), with *complete telling which. */
static size_t utf8_subpart(const unsigned char *s, size_t n, bool *complete)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t need;
    if (c < 0x80) {
        *complete = true;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        need = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
        need = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else {
        *complete = false;
        return 0;
    }
    size_t i = 1;
    for (; i < need && i < n; i++) {
        unsigned char lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xBF;
        if (s[i] < lo_i || s[i] > hi_i)
            break;
    }
    *complete = i == need;
    return i;
}

/* Appends bytes to out as UTF-8, each maximal invalid subpart (or lone bad
 * byte) becoming U+FFFD: CPython errors='replace' / Rust from_utf8_lossy. */
static void utf8_lossy(const unsigned char *s, size_t n, buf *out)
{
    size_t i = 0;
    while (i < n) {
        bool complete;
        size_t k = utf8_subpart(s + i, n - i, &complete);
        if (complete) {
            buf_put(out, s + i, k);
            i += k;
        } else {
            buf_put_cp(out, 0xFFFD);
            i += k ? k : 1;
        }
    }
}

char *vocab_byte_decode(const char *token, size_t len, size_t *out_len)
{
    buf bytes = {0}, text = {0};
    if (token_to_bytes(token, len, &bytes))
        utf8_lossy((const unsigned char *)bytes.p, bytes.len, &text);
    else
        utf8_lossy((const unsigned char *)token, len, &text);
    text.oom |= bytes.oom;
    free(bytes.p);
    return buf_finish(&text, out_len);
}

/* ---- transformers' clean_up_tokenization ----------------------------------- */

/* Replaces every non-overlapping `from` in b (left to right) by `to`. */
static void replace_all(buf *b, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to);
    if (b->oom || b->len < fl)
        return;
    buf out = {0};
    size_t i = 0;
    while (i < b->len) {
        if (i + fl <= b->len && memcmp(b->p + i, from, fl) == 0) {
            buf_put(&out, to, tl);
            i += fl;
        } else {
            buf_put(&out, b->p + i, 1);
            i++;
        }
    }
    size_t len = 0;
    char *p = buf_finish(&out, &len);
    free(b->p);
    *b = (buf){.p = p, .len = len, .cap = len + 1, .oom = p == NULL};
}

char *vocab_clean_up_spaces(const char *text, size_t len, size_t *out_len)
{
    /* The order of transformers' PreTrainedTokenizerBase.clean_up_tokenization. */
    static const char *const pairs[][2] = {
        {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
        {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
    };
    buf b = {0};
    buf_put(&b, text, len);
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++)
        replace_all(&b, pairs[k][0], pairs[k][1]);
    return buf_finish(&b, out_len);
}

/* ---- normaliser ---------------------------------------------------------- */

/* Unicode White_Space, which Rust's char::is_whitespace (Strip) uses. */
static bool is_white_space(int32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static bool is_mark(int32_t c)
{
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_MC ||
           cat == UTF8PROC_CATEGORY_ME;
}

/* Rust char::to_lowercase: the simple mapping except U+0130, whose full
 * lowercase is "i" U+0307 (unreachable after NFD + StripAccents, kept for
 * fidelity). */
static void put_lower(buf *b, int32_t c)
{
    if (c == 0x130) {
        buf_put_cp(b, 'i');
        buf_put_cp(b, 0x307);
        return;
    }
    buf_put_cp(b, utf8proc_tolower(c));
}

/* StripAccents, Lowercase and Replace([ \t\r\n]+ -> " ") over NFD text. */
static bool strip_lower_collapse(const utf8proc_uint8_t *s, size_t n, buf *out)
{
    bool in_run = false;
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0)
            return false;
        i += (size_t)k;
        if (is_mark(c))
            continue;
        bool space = c == ' ' || c == '\t' || c == '\r' || c == '\n';
        if (space && !in_run)
            buf_put(out, " ", 1);
        else if (!space)
            put_lower(out, c);
        in_run = space;
    }
    return true;
}

/* Strip: trims White_Space at both ends of b in place, except that a text
 * of exactly " " is kept (the reference's ^ $ sentinel dance). */
static void strip_white_space(buf *b)
{
    if (b->len == 1 && b->p[0] == ' ')
        return;
    const utf8proc_uint8_t *s = (const utf8proc_uint8_t *)b->p;
    size_t start = 0, end = 0, i = 0;
    bool seen = false;
    while (i < b->len) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(b->len - i), &c);
        if (!is_white_space(c)) {
            if (!seen)
                start = i;
            seen = true;
            end = i + (size_t)k;
        }
        i += (size_t)k;
    }
    if (!seen)
        start = end = 0;
    memmove(b->p, b->p + start, end - start);
    b->len = end - start;
    b->p[b->len] = '\0';
}

char *vocab_normalize(const char *text, size_t len, size_t *out_len)
{
    utf8proc_uint8_t *nfkc = NULL, *nfd = NULL;
    buf out = {0};
    bool ok = false;
    if (len == 0)
        return buf_finish(&out, out_len);
    utf8proc_ssize_t n1 = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len,
                                       &nfkc, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    if (n1 >= 0) {
        utf8proc_ssize_t n2 = n1 == 0 ? 0
                                      : utf8proc_map(nfkc, n1, &nfd, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
        ok = n2 >= 0 && strip_lower_collapse(nfd, (size_t)n2, &out);
    }
    free(nfkc);
    free(nfd);
    if (!ok) {
        free(out.p);
        return NULL;
    }
    if (out.p != NULL)
        strip_white_space(&out);
    return buf_finish(&out, out_len);
}

/* ---- key numbering ------------------------------------------------------- */

typedef struct key_slot {
    char *key; /* NULL: empty slot */
    size_t len;
    int64_t num;
} key_slot;

typedef struct key_table {
    key_slot *slots;
    size_t cap, count;
} key_table;

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h;
}

/* The number of key (taking ownership of it), numbering a new key next.
 * Returns -1 (and frees key) when out of memory. The table is sized for
 * every id up front, so it never fills. */
static int64_t key_number(key_table *t, char *key, size_t len)
{
    size_t i = (size_t)fnv1a(key, len) & (t->cap - 1);
    while (t->slots[i].key != NULL) {
        key_slot *s = &t->slots[i];
        if (s->len == len && memcmp(s->key, key, len) == 0) {
            free(key);
            return s->num;
        }
        i = (i + 1) & (t->cap - 1);
    }
    t->slots[i] = (key_slot){key, len, (int64_t)t->count};
    return (int64_t)t->count++;
}

static void key_table_free(key_table *t)
{
    for (size_t i = 0; i < t->cap; i++)
        free(t->slots[i].key);
    free(t->slots);
}

/* ---- ids from tokenizer.json --------------------------------------------- */

typedef struct id_token {
    const char *s; /* NULL: no token has this id */
    size_t len;
    bool added;
} id_token;

/* Reads a JSON id into *id, checking it is an integer in 0..VOCAB_MAX_ID. */
static int read_id(json_t *v, const char *what, size_t *id, char *err, size_t errlen)
{
    if (!json_is_integer(v)) {
        set_err(err, errlen, "%s: id is not an integer", what);
        return -1;
    }
    json_int_t i = json_integer_value(v);
    if (i < 0 || i > VOCAB_MAX_ID) {
        set_err(err, errlen, "%s: id %lld out of range 0..%d", what, (long long)i, VOCAB_MAX_ID);
        return -1;
    }
    *id = (size_t)i;
    return 0;
}

/* Checks added_tokens (absent is fine) and raises *max_id to cover it. */
static int scan_added(json_t *added, size_t *max_id, char *err, size_t errlen)
{
    size_t i, id;
    json_t *t;
    if (added != NULL && !json_is_array(added)) {
        set_err(err, errlen, "added_tokens is not an array");
        return -1;
    }
    json_array_foreach(added, i, t) {
        char what[64];
        snprintf(what, sizeof what, "added_tokens[%zu]", i);
        if (!json_is_string(json_object_get(t, "content"))) {
            set_err(err, errlen, "%s: no string \"content\"", what);
            return -1;
        }
        if (read_id(json_object_get(t, "id"), what, &id, err, errlen) != 0)
            return -1;
        if (id > *max_id)
            *max_id = id;
    }
    return 0;
}

/* Checks model.vocab's ids and sets *max_id to the highest. */
static int scan_vocab(json_t *vocab, size_t *max_id, char *err, size_t errlen)
{
    const char *key;
    json_t *v;
    size_t id;
    json_object_foreach(vocab, key, v) {
        char what[96];
        snprintf(what, sizeof what, "model.vocab[\"%.60s\"]", key);
        if (read_id(v, what, &id, err, errlen) != 0)
            return -1;
        if (id > *max_id)
            *max_id = id;
    }
    return 0;
}

/* Fills toks[0..n) from model.vocab, then added_tokens (which win). */
static int fill_tokens(json_t *vocab, json_t *added, id_token *toks, char *err, size_t errlen)
{
    const char *key;
    size_t key_len, i;
    json_t *v;
    json_object_keylen_foreach(vocab, key, key_len, v) {
        size_t id = (size_t)json_integer_value(v);
        if (toks[id].s != NULL) {
            set_err(err, errlen, "model.vocab: id %zu is given to two tokens", id);
            return -1;
        }
        toks[id] = (id_token){key, key_len, false};
    }
    json_array_foreach(added, i, v) {
        json_t *content = json_object_get(v, "content");
        size_t id = (size_t)json_integer_value(json_object_get(v, "id"));
        toks[id] = (id_token){json_string_value(content), json_string_length(content), true};
    }
    return 0;
}

/* Gathers every id's token; returns a calloc'd array of *n entries. */
static id_token *collect_tokens(json_t *tok, size_t *n, char *err, size_t errlen)
{
    json_t *vocab = json_object_get(json_object_get(tok, "model"), "vocab");
    json_t *added = json_object_get(tok, "added_tokens");
    size_t max_id = 0;
    if (!json_is_object(vocab)) {
        set_err(err, errlen, "no model.vocab object (not a HuggingFace BPE tokenizer.json?)");
        return NULL;
    }
    if (json_object_size(vocab) == 0 && json_array_size(added) == 0) {
        set_err(err, errlen, "model.vocab is empty");
        return NULL;
    }
    if (scan_vocab(vocab, &max_id, err, errlen) != 0 ||
        scan_added(added, &max_id, err, errlen) != 0)
        return NULL;
    id_token *toks = calloc(max_id + 1, sizeof *toks);
    if (toks == NULL) {
        set_err(err, errlen, "out of memory for %zu ids", max_id + 1);
        return NULL;
    }
    if (fill_tokens(vocab, added, toks, err, errlen) != 0) {
        free(toks);
        return NULL;
    }
    *n = max_id + 1;
    return toks;
}

/* ---- the table ----------------------------------------------------------- */

static char *dup_bytes(const char *s, size_t len)
{
    char *p = malloc(len + 1);
    if (p != NULL) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

/* Whether UTF-8 text holds U+FFFD (the reference's "\ufffd" in text). */
static bool has_replacement(const char *text, size_t len)
{
    for (size_t i = 0; i + 3 <= len; i++)
        if (memcmp(text + i, "\xEF\xBF\xBD", 3) == 0)
            return true;
    return false;
}

/* The text decode([id]) gives under the rule (malloc'd, length in *len);
 * NULL on OOM. */
static char *id_text(const id_token *t, const vocab_options *opt, size_t *len)
{
    char *text = t->s == NULL ? dup_bytes("", 0)
                 : t->added   ? dup_bytes(t->s, t->len)
                              : vocab_byte_decode(t->s, t->len, len);
    if (text == NULL)
        return NULL;
    if (t->s == NULL)
        *len = 0;
    else if (t->added)
        *len = t->len;
    if (opt->rule == VOCAB_RULE_DEMO_V1 && opt->clean_up_spaces) {
        char *clean = vocab_clean_up_spaces(text, *len, len);
        free(text);
        text = clean;
    }
    return text;
}

/* The reference's key for one id (malloc'd, length in *len); NULL on OOM. */
static char *id_key(const id_token *t, const vocab_options *opt, size_t *len)
{
    size_t tlen = 0, nlen = 0;
    char *text = id_text(t, opt, &tlen);
    if (text == NULL)
        return NULL;
    if (has_replacement(text, tlen)) {
        free(text);
        *len = t->len;
        return dup_bytes(t->s, t->len);
    }
    char *norm = vocab_normalize(text, tlen, &nlen);
    if (norm == NULL || nlen == 0) {
        free(norm);
        *len = tlen;
        return text;
    }
    free(text);
    *len = nlen;
    return norm;
}

/* Numbers every id's key; returns 0 or -1 with err set. */
static int number_keys(const id_token *toks, size_t n, const vocab_options *opt,
                       int64_t *lookup, size_t *compressed, char *err, size_t errlen)
{
    key_table kt = {0};
    kt.cap = 16;
    while (kt.cap < 2 * n)
        kt.cap *= 2;
    kt.slots = calloc(kt.cap, sizeof *kt.slots);
    int rc = kt.slots == NULL ? -1 : 0;
    for (size_t id = 0; rc == 0 && id < n; id++) {
        size_t len;
        char *key = id_key(&toks[id], opt, &len);
        lookup[id] = key == NULL ? -1 : key_number(&kt, key, len);
        if (lookup[id] < 0)
            rc = -1;
    }
    if (rc != 0)
        set_err(err, errlen, "out of memory building the table");
    *compressed = kt.count;
    if (kt.slots != NULL)
        key_table_free(&kt);
    return rc;
}

int64_t *vocab_build_lookup(json_t *tok, const vocab_options *opt, size_t *n,
                            size_t *compressed, char *err, size_t errlen)
{
    static const vocab_options v41 = {VOCAB_RULE_V41, 0};
    if (opt == NULL)
        opt = &v41;
    size_t count = 0;
    id_token *toks = collect_tokens(tok, &count, err, errlen);
    if (toks == NULL)
        return NULL;
    int64_t *lookup = malloc(count * sizeof *lookup);
    if (lookup == NULL)
        set_err(err, errlen, "out of memory for %zu ids", count);
    else if (number_keys(toks, count, opt, lookup, compressed, err, errlen) != 0) {
        free(lookup);
        lookup = NULL;
    }
    free(toks);
    if (lookup != NULL)
        *n = count;
    return lookup;
}

/* ---- file in, file out --------------------------------------------------- */

int vocab_write_table(const char *path, const int64_t *lookup, size_t n, char *err,
                      size_t errlen)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        set_err(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    fputs("{\"lookup_table\": [", f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, i ? ", %lld" : "%lld", (long long)lookup[i]);
    fputs("]}\n", f);
    int bad = ferror(f);
    int saved = errno;
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        saved = errno;
    }
    if (bad) {
        set_err(err, errlen, "cannot write %s: %s", path, strerror(saved));
        remove(path);
        return -1;
    }
    return 0;
}

int64_t *vocab_build_file(const char *tokenizer_json, const vocab_options *opt, size_t *n,
                          size_t *compressed, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *tok = json_load_file(tokenizer_json, JSON_ALLOW_NUL, &jerr);
    if (tok == NULL) {
        if (jerr.line > 0)
            set_err(err, errlen, "%s: bad JSON at line %d column %d: %s", tokenizer_json,
                    jerr.line, jerr.column, jerr.text);
        else
            set_err(err, errlen, "%s", jerr.text);
        return NULL;
    }
    char why[256] = "";
    int64_t *lookup = vocab_build_lookup(tok, opt, n, compressed, why, sizeof why);
    json_decref(tok);
    if (lookup == NULL)
        set_err(err, errlen, "%s: %s", tokenizer_json, why);
    return lookup;
}

int vocab_compress_file(const char *tokenizer_json, const vocab_options *opt,
                        const char *out_path, vocab_stats *stats, char *err, size_t errlen)
{
    size_t n = 0, compressed = 0;
    int64_t *lookup = vocab_build_file(tokenizer_json, opt, &n, &compressed, err, errlen);
    if (lookup == NULL)
        return -1;
    int rc = vocab_write_table(out_path, lookup, n, err, errlen);
    free(lookup);
    if (rc == 0 && stats != NULL)
        *stats = (vocab_stats){n, compressed};
    return rc;
}
