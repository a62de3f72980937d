/* compress_vocab.c: engramctl compress-vocab, the Engram compression table
 * of a HuggingFace tokenizer (vocab.c does the work), no server:
 *
 *   engramctl compress-vocab --tokenizer tokenizer.json --out FILE.json
 *       [--rule v4.1|demo-v1] [--clean-up-spaces on|off]
 *       [--manifest TEMPLATE.json]
 *
 * writes {"lookup_table": [...]}, ready for a manifest's "compression", or,
 * with --manifest, the template (a shipped model such as
 * deploy/models/deepseek-v4.1-flash.json, which carries everything but the
 * table) completed with its "compression": a manifest ready for
 * put-manifest. A template that states "compressed_vocab_size" refuses a
 * table of another size, as the reference engines assert, since every hash
 * multiplier derives from that size; the result is parsed as a manifest
 * before it is written, so a file that is written is one the server takes.
 *
 * --rule demo-v1 applies transformers' clean_up_tokenization_spaces when the
 * tokenizer's tokenizer_config.json (beside tokenizer.json) asks for it, or
 * when it does not say (transformers' default); --clean-up-spaces overrides. */
#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "manifest.h"
#include "vocab.h"

/* The tokenizer's own clean_up_tokenization_spaces: tokenizer_config.json
 * in the tokenizer's directory; 1 (transformers' default) when neither the
 * file nor the key is there. *from names where the answer came from. */
static int config_clean_up(const char *tokenizer_json, const char **from)
{
    static char path[4096];
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", tokenizer_json);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dirname(dir));
    json_t *cfg = json_load_file(path, 0, NULL);
    json_t *v = json_object_get(cfg, "clean_up_tokenization_spaces");
    int on = json_is_boolean(v) ? json_is_true(v) : 1;
    *from = json_is_boolean(v) ? path : "transformers' default (no tokenizer_config.json key)";
    json_decref(cfg);
    return on;
}

static int parse_rule(const opts *o, const char *tok, vocab_options *vo, const char **why)
{
    const char *rule = opt(o, "--rule") ? opt(o, "--rule") : "v4.1";
    const char *clean = opt(o, "--clean-up-spaces");
    *why = "";
    if (strcmp(rule, "v4.1") == 0)
        vo->rule = VOCAB_RULE_V41;
    else if (strcmp(rule, "demo-v1") == 0)
        vo->rule = VOCAB_RULE_DEMO_V1;
    else
        return die_usage("compress-vocab: --rule '%s': expected v4.1 or demo-v1", rule);
    if (clean && vo->rule != VOCAB_RULE_DEMO_V1)
        return die_usage("compress-vocab: --clean-up-spaces goes with --rule demo-v1 (the v4.1 "
                         "rule decodes raw, never cleaned up)");
    if (clean && strcmp(clean, "on") != 0 && strcmp(clean, "off") != 0)
        return die_usage("compress-vocab: --clean-up-spaces '%s': expected on or off", clean);
    if (vo->rule == VOCAB_RULE_DEMO_V1) {
        vo->clean_up_spaces = clean ? strcmp(clean, "on") == 0 : config_clean_up(tok, why);
        if (clean)
            *why = "--clean-up-spaces";
    }
    return 0;
}

/* The template's text with "compression" set to the table. The table is
 * written on one line and the rest indented as a person would keep it. */
static char *complete_manifest(json_t *m, const int64_t *lookup, size_t n)
{
    static const char mark[] = "\"@@lookup_table@@\"";
    json_t *comp = json_object();
    json_object_set_new(comp, "lookup_table", json_string("@@lookup_table@@"));
    json_object_set_new(m, "compression", comp);
    char *text = json_dumps(m, JSON_INDENT(2));
    char *at = text ? strstr(text, mark) : NULL;
    if (!at) {
        free(text);
        return NULL;
    }
    size_t head = (size_t)(at - text), tail = strlen(at + sizeof mark - 1);
    char *out = malloc(head + n * 22 + 8 + tail + 2);
    if (out) {
        char *p = out + head;
        memcpy(out, text, head);
        *p++ = '[';
        for (size_t i = 0; i < n; i++)
            p += sprintf(p, i ? ", %lld" : "%lld", (long long)lookup[i]);
        *p++ = ']';
        memcpy(p, at + sizeof mark - 1, tail);
        p[tail] = '\n';
        p[tail + 1] = '\0';
    }
    free(text);
    return out;
}

/* Writes text to path through a temporary file and a rename, so a failed
 * write never leaves a half manifest. */
static int write_atomic(const char *path, const char *text)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "cannot create %s: %s", tmp, strerror(errno));
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "cannot write %s: %s", path, strerror(e));
    }
    return 0;
}

static int write_manifest(const char *tmpl, const char *tok, const char *rule,
                          const int64_t *lookup, size_t n, size_t compressed, const char *out)
{
    json_error_t je;
    json_t *m = json_load_file(tmpl, JSON_REJECT_DUPLICATES, &je);
    if (!m)
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s: bad JSON at line %d column %d: %s", tmpl,
                    je.line, je.column, je.text);
    json_t *want = json_object_get(m, "compressed_vocab_size");
    if (json_is_integer(want) && (size_t)json_integer_value(want) != compressed) {
        long long w = json_integer_value(want);
        json_decref(m);
        return ctl_fail(ENGRAM_INVALID_ARGUMENT,
                    "%s gives %zu compressed ids under the %s rule, but %s states "
                    "\"compressed_vocab_size\": %lld; this is not the model's tokenizer (or "
                    "not its rule), and hashing with it would address other rows (every "
                    "multiplier derives from that size); nothing written",
                    tok, compressed, rule, tmpl, w);
    }
    char *text = complete_manifest(m, lookup, n);
    json_decref(m);
    if (!text)
        return ctl_fail(ENGRAM_RESOURCE_EXHAUSTED, "out of memory writing the manifest");
    char why[512];
    engram_manifest *check = manifest_parse(text, strlen(text), why, sizeof why);
    if (!check) {
        free(text);
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s completed with the table is not a valid "
                    "manifest: %s; nothing written", tmpl, why);
    }
    manifest_free(check);
    int rc = write_atomic(out, text);
    free(text);
    return rc;
}

int cmd_compress_vocab(engram_client *cl, int argc, char **argv)
{
    (void)cl;
    opts o = {.names = {"--tokenizer", "--out", "--rule", "--clean-up-spaces", "--manifest"},
              .n = 5};
    const char *c = "compress-vocab";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    const char *tok = ctl_need(&o, "--tokenizer", c), *out = ctl_need(&o, "--out", c);
    if (!tok || !out)
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("%s: unexpected argument '%s'", c, o.pos[0]);
    vocab_options vo = {VOCAB_RULE_V41, 0};
    const char *clean_from;
    if (parse_rule(&o, tok, &vo, &clean_from))
        return EXIT_USAGE;
    const char *rule = vo.rule == VOCAB_RULE_V41 ? "v4.1" : "demo-v1";
    size_t n = 0, compressed = 0;
    char why[512];
    int64_t *lookup = vocab_build_file(tok, &vo, &n, &compressed, why, sizeof why);
    if (!lookup)
        return ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s", why);
    int rc = opt(&o, "--manifest")
                 ? write_manifest(opt(&o, "--manifest"), tok, rule, lookup, n, compressed, out)
                 : vocab_write_table(out, lookup, n, why, sizeof why)
                       ? ctl_fail(ENGRAM_INVALID_ARGUMENT, "%s", why)
                       : 0;
    free(lookup);
    if (rc)
        return rc;
    printf("%zu token ids -> %zu compressed ids (%.2f%% fewer), rule %s", n, compressed,
           n ? 100.0 * (double)(n - compressed) / (double)n : 0.0, rule);
    if (vo.rule == VOCAB_RULE_DEMO_V1)
        printf(", clean-up %s (%s)", vo.clean_up_spaces ? "on" : "off", clean_from);
    printf("; wrote %s%s\n", out, opt(&o, "--manifest") ? " (a complete manifest)" : "");
    return 0;
}
