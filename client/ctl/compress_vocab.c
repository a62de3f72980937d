/* compress_vocab.c: engramctl compress-vocab, the Engram compression table
 * of a HuggingFace tokenizer (client/vocab.c does the work), no server:
 *
 *   engramctl compress-vocab --tokenizer tokenizer.json --out FILE.json
 *
 * writes {"lookup_table": [...]}, ready for a manifest's "compression". */
#include <stdio.h>

#include "ctl.h"
#include "vocab.h"

int cmd_compress_vocab(engram_client *cl, int argc, char **argv)
{
    opts o = {.names = {"--tokenizer", "--out"}, .n = 2};
    const char *c = "compress-vocab";
    if (parse_opts(&o, argc, argv, c))
        return EXIT_USAGE;
    const char *tok = need(&o, "--tokenizer", c), *out = need(&o, "--out", c);
    if (!tok || !out)
        return EXIT_USAGE;
    if (o.npos)
        return die_usage("%s: unexpected argument '%s'", c, o.pos[0]);
    vocab_stats st;
    char why[512];
    if (vocab_compress_file(tok, out, &st, why, sizeof why))
        return fail(ENGRAM_INVALID_ARGUMENT, "%s", why);
    printf("%zu token ids -> %zu compressed ids (%.2f%% fewer); wrote %s\n", st.ids, st.compressed,
           st.ids ? 100.0 * (double)(st.ids - st.compressed) / (double)st.ids : 0.0, out);
    return 0;
}
