/* test_vocab.c: the compress-vocab table builder (client/vocab.c).
 *
 * Checks the reference normaliser on hand-made cases, the byte-level decode
 * (GPT-2 bytes_to_unicode and CPython/Rust U+FFFD replacement, expected
 * values taken from Python's bytes.decode('utf-8', 'replace')), a small
 * hand-written tokenizer.json whose table was worked out by hand, the demo
 * rule's clean-up (expected values from transformers' clean_up_tokenization
 * worked by hand) and where it changes a table, and the error messages. With VOCAB_TOKENIZER_JSON set to DeepSeek-V3's
 * tokenizer.json it also checks the acceptance figure 128815 -> 98627
 * (skipped otherwise). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "vocab.h"

/* ---- helpers ------------------------------------------------------------- */

/* Normalises a NUL-terminated string and checks the result. */
static void check_norm(const char *in, const char *want)
{
    size_t len = 0;
    char *got = vocab_normalize(in, strlen(in), &len);
    assert_non_null(got);
    assert_string_equal(got, want);
    assert_int_equal(len, strlen(want));
    free(got);
}

/* GPT-2 bytes_to_unicode forward, written independently of vocab.c: builds
 * the token string (UTF-8) that stands for the given bytes. */
static void bytes_to_token(const unsigned char *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        unsigned cp = b[i], skipped = 0;
        int kept = (cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || cp >= 174;
        if (!kept) {
            for (unsigned x = 0; x < b[i]; x++)
                skipped += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174);
            cp = 256 + skipped;
        }
        if (cp < 0x80) {
            *out++ = (char)cp;
        } else {
            *out++ = (char)(0xC0 | (cp >> 6));
            *out++ = (char)(0x80 | (cp & 0x3F));
        }
    }
    *out = '\0';
}

/* Byte-decodes the token for the given bytes and checks the text. */
static void check_bytes_decode(const char *bytes, const char *want)
{
    char token[64];
    size_t len = 0;
    bytes_to_token((const unsigned char *)bytes, strlen(bytes), token);
    char *got = vocab_byte_decode(token, strlen(token), &len);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

static char tmpdir[] = "/tmp/test_vocab.XXXXXX";

static int setup(void **state)
{
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes text to tmpdir/name and returns the path (static buffer). */
static const char *write_tmp(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    return path;
}

/* Runs vocab_compress_file on json text; expects failure mentioning want. */
static void check_error(const char *json, const char *want)
{
    char in[256], out[256], err[256] = "";
    snprintf(in, sizeof in, "%s", write_tmp("err.json", json));
    snprintf(out, sizeof out, "%s/err.out", tmpdir);
    assert_int_equal(vocab_compress_file(in, NULL, out, NULL, err, sizeof err), -1);
    if (strstr(err, want) == NULL)
        fail_msg("error \"%s\" does not mention \"%s\"", err, want);
}

/* ---- normaliser ---------------------------------------------------------- */

static void test_normalize_accents_and_case(void **state)
{
    check_norm("Caf\xC3\xA9", "cafe");                 /* precomposed é */
    check_norm("Cafe\xCC\x81", "cafe");                /* e + U+0301 */
    check_norm("\xC3\x85NGSTR\xC3\x96M", "angstrom");  /* ÅNGSTRÖM */
    check_norm("\xC4\xB0", "i");                       /* İ: NFD, mark dropped */
    check_norm("a\xE0\xA4\xBE\xE2\x83\x9D", "a");      /* Mc U+093E, Me U+20DD */
    /* per-char lowercase: no final-sigma rule (ΣΑΣ -> σασ) */
    check_norm("\xCE\xA3\xCE\x91\xCE\xA3", "\xCF\x83\xCE\xB1\xCF\x83");
}

static void test_normalize_nfkc(void **state)
{
    check_norm("\xEF\xAC\x81", "fi");         /* ﬁ ligature */
    check_norm("\xEF\xBC\xA1", "a");          /* fullwidth Ａ */
    check_norm("x\xC2\xB2", "x2");            /* superscript two */
    check_norm("\xE2\x84\xAB", "a");          /* Angstrom sign */
}

static void test_normalize_whitespace(void **state)
{
    check_norm("a  \t\n\r b", "a b");
    check_norm(" ", " ");                     /* exactly one space stays */
    check_norm("\t", " ");
    check_norm("\n\n", " ");
    check_norm("\xC2\xA0", " ");              /* NBSP: NFKC makes it " " */
    check_norm("  x  ", "x");
    check_norm("\xC2\xA0x\xE3\x80\x80", "x"); /* U+00A0 .. U+3000 */
    check_norm("\xE1\x9A\x80x\xC2\x85", "x"); /* U+1680, U+0085: White_Space */
    check_norm("x\x0By", "x\x0By");           /* VT is not collapsed */
    check_norm(" \xC2\x85", "");              /* not exactly " ", strips empty */
}

static void test_normalize_empty_and_nul(void **state)
{
    size_t len = 99;
    char *got = vocab_normalize("", 0, &len);
    assert_non_null(got);
    assert_int_equal(len, 0);
    free(got);
    check_norm("\xCC\x81", "");               /* a lone mark vanishes */
    got = vocab_normalize("\0", 1, &len);
    assert_non_null(got);
    assert_int_equal(len, 1);
    assert_int_equal(got[0], '\0');
    free(got);
    assert_null(vocab_normalize("\xFF", 1, &len)); /* not UTF-8 */
}

/* ---- byte-level decode --------------------------------------------------- */

static void test_byte_decode_gpt2(void **state)
{
    size_t len = 0;
    char *got = vocab_byte_decode("\xC4\xA0the", 5, &len);     /* Ġthe */
    assert_string_equal(got, " the");
    free(got);
    got = vocab_byte_decode("\xC4\x8A", 2, &len);              /* Ċ */
    assert_string_equal(got, "\n");
    free(got);
    got = vocab_byte_decode("Caf\xC3\x83\xC2\xA9", 7, &len);   /* CafÃ© */
    assert_string_equal(got, "Caf\xC3\xA9");
    free(got);
    got = vocab_byte_decode("\xC4\x80", 2, &len);              /* Ā: byte 0 */
    assert_int_equal(len, 1);
    assert_int_equal(got[0], '\0');
    free(got);
    /* a char outside the table: the token keeps its own bytes */
    const char *special = "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xEF\xBD\x9C>";
    got = vocab_byte_decode(special, strlen(special), &len);
    assert_string_equal(got, special);
    free(got);
}

static void test_byte_decode_replacement(void **state)
{
#define FFFD "\xEF\xBF\xBD"
    check_bytes_decode("\xC3", FFFD);                           /* token "Ã" */
    check_bytes_decode("\xE2\x82", FFFD);                       /* truncated */
    check_bytes_decode("\xE2\x82\xAC", "\xE2\x82\xAC");         /* € whole */
    check_bytes_decode("\xF0\x9F\x98", FFFD);
    check_bytes_decode("\xF0\x80", FFFD FFFD);
    check_bytes_decode("\xED\xA0\x80", FFFD FFFD FFFD);         /* surrogate */
    check_bytes_decode("\xC0\xAF", FFFD FFFD);                  /* overlong */
    check_bytes_decode("a\xF4\x90\x80\x80" "b", "a" FFFD FFFD FFFD FFFD "b");
#undef FFFD
}

/* ---- a hand-written tokenizer.json --------------------------------------- */

/* id: token -> decoded text -> key (key number)
 *  0 Hello     -> "Hello"   -> "hello"   (0)
 *  1 Ġhello    -> " hello"  -> "hello"   (0)
 *  2 Ġ         -> " "       -> " "       (1)
 *  3 ĠĠ        -> "  "      -> " "       (1)
 *  4 Ċ         -> "\n"      -> " "       (1)
 *  5 CafÃ©     -> "Café"    -> "cafe"    (2)
 *  6 (hole)    -> ""        -> ""        (3)
 *  7 Ã         -> U+FFFD    -> "Ã" raw token (4)
 *  8 added "<|end|>"        -> "<|end|>" (5)
 *  9 cafe      -> "cafe"    -> "cafe"    (2)
 * 10 ĉ         -> "\t"      -> " "       (1)
 * 11 Ìģ        -> U+0301    -> "" so raw text U+0301 (6)
 * 12 Ġworld, overridden by added "<|W|>"  -> "<|w|>" (7)
 * 13 ĠÂł       -> " \u00a0" -> " "       (1) */
static const char small_tokenizer[] =
    "{\"version\": \"1.0\", \"added_tokens\": ["
    " {\"id\": 8, \"content\": \"<|end|>\", \"special\": true},"
    " {\"id\": 12, \"content\": \"<|W|>\", \"special\": true}],"
    " \"model\": {\"type\": \"BPE\", \"vocab\": {"
    "  \"Hello\": 0, \"\\u0120hello\": 1, \"\\u0120\": 2, \"\\u0120\\u0120\": 3,"
    "  \"\\u010a\": 4, \"Caf\\u00c3\\u00a9\": 5, \"\\u00c3\": 7, \"cafe\": 9,"
    "  \"\\u0109\": 10, \"\\u00cc\\u0123\": 11, \"\\u0120world\": 12,"
    "  \"\\u0120\\u00c2\\u0142\": 13}, \"merges\": []}}";

static void test_small_tokenizer_in_memory(void **state)
{
    static const int64_t want[] = {0, 0, 1, 1, 1, 2, 3, 4, 5, 2, 1, 6, 7, 1};
    json_error_t jerr;
    json_t *tok = json_loads(small_tokenizer, 0, &jerr);
    assert_non_null(tok);
    size_t n = 0, compressed = 0;
    char err[256] = "";
    int64_t *lookup = vocab_build_lookup(tok, NULL, &n, &compressed, err, sizeof err);
    json_decref(tok);
    assert_non_null(lookup);
    assert_int_equal(n, 14);
    assert_int_equal(compressed, 8);
    for (size_t i = 0; i < n; i++)
        if (lookup[i] != want[i])
            fail_msg("lookup[%zu] = %lld, want %lld", i, (long long)lookup[i],
                     (long long)want[i]);
    free(lookup);
}

static void test_small_tokenizer_file(void **state)
{
    char in[256], out[256], err[256] = "", text[256] = "";
    snprintf(in, sizeof in, "%s", write_tmp("tokenizer.json", small_tokenizer));
    snprintf(out, sizeof out, "%s/table.json", tmpdir);
    vocab_stats st = {0};
    assert_int_equal(vocab_compress_file(in, NULL, out, &st, err, sizeof err), 0);
    assert_int_equal(st.ids, 14);
    assert_int_equal(st.compressed, 8);
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    size_t got = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[got] = '\0';
    assert_string_equal(text, "{\"lookup_table\": [0, 0, 1, 1, 1, 2, 3, 4, 5, 2, 1, 6, 7, 1]}\n");
}

/* ---- the demo rule: transformers' clean-up -------------------------------- */

static void check_clean(const char *in, const char *want)
{
    size_t len = 0;
    char *got = vocab_clean_up_spaces(in, strlen(in), &len);
    assert_non_null(got);
    assert_string_equal(got, want);
    assert_int_equal(len, strlen(want));
    free(got);
}

static void test_clean_up_spaces(void **state)
{
    check_clean("", "");
    check_clean(" .", ".");
    check_clean("a , b ? c ! d .", "a, b? c! d.");
    check_clean("don 't", "don 't");          /* " 't" is not in the list */
    check_clean("do n't", "don't");
    check_clean("I 'm you 're we 've it 's", "I'm you're we've it's");
    check_clean("x ' y", "x'y");               /* " ' " -> "'" */
    check_clean("  .", " .");                  /* one pass: "  ." has one " ." */
    check_clean(" , ,", ",,");
    check_clean("\xC3\xA9 .", "\xC3\xA9.");     /* bytes kept around it */
}

/* Where the rules part: a token with the pattern inside it. " , ," is
 * ", ," after normalising under the V4.1 rule but ",," after the demo
 * rule's clean-up, so it shares ",,"'s id only under the demo rule; a
 * leading " ." is stripped by the normaliser either way. */
static void test_rules_differ(void **state)
{
    static const char tokenizer[] =
        "{\"model\": {\"vocab\": {\",,\": 0, \"\\u0120,\\u0120,\": 1, \".\": 2,"
        " \"\\u0120.\": 3}}}";
    static const int64_t want_v41[] = {0, 1, 2, 2}, want_demo[] = {0, 0, 1, 1};
    json_error_t jerr;
    json_t *tok = json_loads(tokenizer, 0, &jerr);
    assert_non_null(tok);
    vocab_options demo = {VOCAB_RULE_DEMO_V1, 1}, demo_off = {VOCAB_RULE_DEMO_V1, 0};
    const vocab_options *opts[] = {NULL, &demo, &demo_off};
    const int64_t *wants[] = {want_v41, want_demo, want_v41};
    for (int k = 0; k < 3; k++) {
        size_t n = 0, compressed = 0;
        char err[256] = "";
        int64_t *lookup = vocab_build_lookup(tok, opts[k], &n, &compressed, err, sizeof err);
        assert_non_null(lookup);
        assert_int_equal(n, 4);
        for (size_t i = 0; i < n; i++)
            if (lookup[i] != wants[k][i])
                fail_msg("rule %d: lookup[%zu] = %lld, want %lld", k, i, (long long)lookup[i],
                         (long long)wants[k][i]);
        assert_int_equal(compressed, (size_t)wants[k][3] + 1);
        free(lookup);
    }
    json_decref(tok);
}

/* ---- errors -------------------------------------------------------------- */

static void test_errors(void **state)
{
    char err[256] = "", out[256];
    snprintf(out, sizeof out, "%s/x.out", tmpdir);
    assert_int_equal(vocab_compress_file("/nonexistent/tokenizer.json", NULL, out, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/tokenizer.json"));
    check_error("{\"model\": {\"vocab\": {\"a\": 0}", "bad JSON at line");
    check_error("{\"model\": {\"type\": \"BPE\"}}", "no model.vocab");
    check_error("{\"added_tokens\": []}", "no model.vocab");
    check_error("{\"model\": {\"vocab\": {\"a\": \"0\"}}}", "not an integer");
    check_error("{\"model\": {\"vocab\": {\"a\": -1}}}", "out of range");
    check_error("{\"model\": {\"vocab\": {\"a\": 0, \"b\": 0}}}", "two tokens");
    check_error("{\"model\": {\"vocab\": {\"a\": 0}}, \"added_tokens\": [{\"id\": 1}]}",
                "no string \"content\"");
    const char *in = write_tmp("ok.json", "{\"model\": {\"vocab\": {\"a\": 0}}}");
    assert_int_equal(vocab_compress_file(in, NULL, "/nonexistent/dir/out.json", NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create /nonexistent/dir/out.json"));
}

/* ---- the real DeepSeek-V3 tokenizer (optional) --------------------------- */

static void test_deepseek_v3_if_given(void **state)
{
    const char *path = getenv("VOCAB_TOKENIZER_JSON");
    if (path == NULL || *path == '\0')
        skip();
    char out[256], err[256] = "";
    snprintf(out, sizeof out, "%s/deepseek_table.json", tmpdir);
    vocab_stats st = {0};
    if (vocab_compress_file(path, NULL, out, &st, err, sizeof err) != 0)
        fail_msg("%s", err);
    print_message("%s: %zu ids -> %zu\n", path, st.ids, st.compressed);
    assert_int_equal(st.ids, 128815);
    assert_int_equal(st.compressed, 98627);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normalize_accents_and_case),
        cmocka_unit_test(test_normalize_nfkc),
        cmocka_unit_test(test_normalize_whitespace),
        cmocka_unit_test(test_normalize_empty_and_nul),
        cmocka_unit_test(test_byte_decode_gpt2),
        cmocka_unit_test(test_byte_decode_replacement),
        cmocka_unit_test(test_small_tokenizer_in_memory),
        cmocka_unit_test(test_small_tokenizer_file),
        cmocka_unit_test(test_clean_up_spaces),
        cmocka_unit_test(test_rules_differ),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_deepseek_v3_if_given),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
