/* hash_bench.c: engram-hash-bench, single-thread throughput of eh_hash.
 *
 *   engram-hash-bench [--tokens FILE] [--batch B (64)] [--seq T (4096)]
 *                     [--seconds S (5)] [--dump FILE] [--no-plain]
 *
 * Config: the reference demo's (engram_demo_v1.py): engram_vocab_size
 * [646400, 646400], max_ngram 3, 8 heads per order (16 heads), layers
 * [1, 15], pad id 2, seed 0; compression table: identity over DeepSeek-V3's
 * 129280 ids (so V' = 129280; the real CompressedTokenizer table is a
 * many-to-one map of the same size, which costs the same lookup).
 *
 * Tokens: the real workload (tests/data/workload/tokens.bin, int32 LE,
 * 984266 DeepSeek-V3 tokens of English prose), cut into consecutive,
 * non-overlapping [B, T] batches (3 batches of 64 x 4096 by default; the
 * tail is unused). Each batch is hashed with no history (positions before
 * t = 0 are the pad, as in the reference).
 *
 * Timed loop: for a fixed time, cycling over the batches, one eh_hash call
 * per layer per batch into a [B, T, 16] uint64 buffer. One untimed warm-up
 * pass first. Units:
 *   token        one position of one sequence, hashed for ALL layers
 *                (B * T per batch): the rate a prefetcher must sustain;
 *   token-layer  one position for one layer (= 16 row ids);
 *   row id       one head's global row id.
 *
 * --no-plain skips the second timed run, "plain": the same loops written
 * naively in this file (compress, shift, XOR of products, then % per head),
 * which shows what the precomputed reciprocal and the incremental mixes buy.
 * Its rows are checked equal to eh_hash's on the first batch either way.
 *
 * --dump FILE writes the first batch's row ids, all layers, as uint64 LE
 * [layers, B, T, 16], for hash_bench_numpy.py --check.
 *
 * Output: a human-readable block, then one line `bench: key=value ...`. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engram_hash.h"

#ifndef ENGRAM_TESTDATA_DIR
#error "ENGRAM_TESTDATA_DIR must name tests/data (tests/CMakeLists.txt sets it)"
#endif

#define DEMO_VOCAB 129280

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void usage(void)
{
    fprintf(stderr, "usage: engram-hash-bench [--tokens FILE] [--batch B] [--seq T] "
                    "[--seconds S] [--dump FILE] [--no-plain]\n");
    exit(2);
}

/* The naive loops: compress each of the n tokens of an n-gram where used,
 * full XOR per order, % per head. Same results as eh_hash for valid ids. */
static void plain_hash(const eh_model *m, int li, const int64_t *tok, size_t B, size_t T,
                       uint64_t *out)
{
    const eh_layer *L = &m->layers[li];
    const int N = m->max_ngram, H = m->n_head_per_ngram, heads = m->heads;
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++) {
            uint64_t *o = out + (b * T + t) * (size_t)heads;
            for (int n = 2; n <= N; n++) {
                int64_t mix = 0;
                for (int k = 0; k < n; k++) {
                    int64_t c = (size_t)k <= t ? m->lookup[tok[b * T + t - (size_t)k]]
                                               : m->compressed_pad;
                    mix ^= (int64_t)((uint64_t)c * (uint64_t)L->multipliers[k]);
                }
                for (int j = 0; j < H; j++) {
                    int h = (n - 2) * H + j;
                    int64_t r = mix % (int64_t)L->primes[h];
                    if (r < 0)
                        r += (int64_t)L->primes[h];
                    o[h] = (uint64_t)r + L->offsets[h];
                }
            }
        }
}

typedef struct run_result {
    uint64_t batches;
    double elapsed;
} run_result;

static run_result timed(const eh_model *m, int plain, int64_t *const *batches, size_t nb,
                        size_t B, size_t T, uint64_t *out, double seconds)
{
    char err[256];
    run_result r = {0, 0};
    double t0 = now_s(), t;
    size_t i = 0;
    do {
        for (int li = 0; li < m->n_layers; li++) {
            if (plain) {
                plain_hash(m, li, batches[i], B, T, out);
            } else if (eh_hash(m, li, batches[i], B, T, NULL, out, err, sizeof err) != 0) {
                fprintf(stderr, "eh_hash: %s\n", err);
                exit(1);
            }
        }
        r.batches++;
        i = (i + 1) % nb;
        t = now_s();
    } while (t - t0 < seconds);
    r.elapsed = t - t0;
    return r;
}

int main(int argc, char **argv)
{
    const char *tokens_path = ENGRAM_TESTDATA_DIR "/workload/tokens.bin";
    const char *dump = NULL;
    size_t B = 64, T = 4096;
    double seconds = 5;
    int run_plain = 1;
    static const struct option lo[] = {
        {"tokens", required_argument, 0, 'k'}, {"batch", required_argument, 0, 'b'},
        {"seq", required_argument, 0, 't'},    {"seconds", required_argument, 0, 's'},
        {"dump", required_argument, 0, 'd'},   {"no-plain", no_argument, 0, 'n'},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'k': tokens_path = optarg; break;
        case 'b': B = strtoull(optarg, NULL, 10); break;
        case 't': T = strtoull(optarg, NULL, 10); break;
        case 's': seconds = strtod(optarg, NULL); break;
        case 'd': dump = optarg; break;
        case 'n': run_plain = 0; break;
        default: usage();
        }
    }
    if (B == 0 || T == 0 || seconds <= 0)
        usage();

    /* Tokens. */
    FILE *f = fopen(tokens_path, "rb");
    if (!f) {
        perror(tokens_path);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    size_t ntok = (size_t)bytes / 4;
    unsigned char *raw = malloc((size_t)bytes);
    if (!raw || fread(raw, 1, (size_t)bytes, f) != (size_t)bytes) {
        fprintf(stderr, "cannot read %s\n", tokens_path);
        return 2;
    }
    fclose(f);
    size_t nb = ntok / (B * T);
    if (nb == 0) {
        fprintf(stderr, "%zu tokens are fewer than one %zu x %zu batch\n", ntok, B, T);
        return 2;
    }
    int64_t **batches = malloc(nb * sizeof *batches);
    for (size_t i = 0; i < nb; i++) {
        batches[i] = malloc(B * T * sizeof **batches);
        for (size_t k = 0; k < B * T; k++) {
            const unsigned char *p = raw + 4 * (i * B * T + k);
            int32_t v = (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                  (uint32_t)p[3] << 24);
            if (v < 0 || v >= DEMO_VOCAB) {
                fprintf(stderr, "token %d at %zu is outside 0..%d\n", v, i * B * T + k,
                        DEMO_VOCAB - 1);
                return 2;
            }
            batches[i][k] = v;
        }
    }
    free(raw);

    /* The demo config. */
    static int64_t lut[DEMO_VOCAB];
    for (int i = 0; i < DEMO_VOCAB; i++)
        lut[i] = i;
    eh_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.max_ngram = 3;
    cfg.n_head_per_ngram = 8;
    cfg.vocab_sizes[0] = 646400;
    cfg.vocab_sizes[1] = 646400;
    cfg.n_layers = 2;
    cfg.layer_ids[0] = 1;
    cfg.layer_ids[1] = 15;
    cfg.pad_id = 2;
    cfg.seed = 0;
    cfg.lookup = lut;
    cfg.lookup_len = DEMO_VOCAB;
    char err[256];
    double tc = now_s();
    eh_model *m = eh_model_create(&cfg, err, sizeof err);
    tc = now_s() - tc;
    if (!m) {
        fprintf(stderr, "eh_model_create: %s\n", err);
        return 2;
    }
    const size_t heads = (size_t)m->heads, per = B * T * heads;
    uint64_t *out = malloc(per * sizeof *out);
    uint64_t *ref = malloc(per * sizeof *ref);

    printf("config: vocab [646400, 646400], max_ngram 3, 8 heads/order (16), layers [1, 15], "
           "pad 2, seed 0, identity compression of %d ids\n",
           DEMO_VOCAB);
    printf("model: created in %.3f ms; primes L1 %" PRIu64 "..%" PRIu64 ", L15 %" PRIu64
           "..%" PRIu64 "; multipliers L1 %" PRId64 " %" PRId64 " %" PRId64 "\n",
           tc * 1e3, m->layers[0].primes[0], m->layers[0].primes[heads - 1],
           m->layers[1].primes[0], m->layers[1].primes[heads - 1], m->layers[0].multipliers[0],
           m->layers[0].multipliers[1], m->layers[0].multipliers[2]);
    printf("tokens: %s, %zu tokens -> %zu batches of [%zu, %zu]\n", tokens_path, ntok, nb, B, T);

    /* Check and dump the first batch. */
    FILE *df = NULL;
    if (dump && !(df = fopen(dump, "wb"))) {
        perror(dump);
        return 2;
    }
    for (int li = 0; li < m->n_layers; li++) {
        if (eh_hash(m, li, batches[0], B, T, NULL, out, err, sizeof err) != 0) {
            fprintf(stderr, "eh_hash: %s\n", err);
            return 1;
        }
        plain_hash(m, li, batches[0], B, T, ref);
        if (memcmp(out, ref, per * sizeof *out) != 0) {
            fprintf(stderr, "eh_hash and the plain loops differ on layer %d\n", li);
            return 1;
        }
        if (df && fwrite(out, sizeof *out, per, df) != per) {
            perror(dump);
            return 2;
        }
    }
    if (df) {
        fclose(df);
        printf("dump: %s (batch 0, uint64 LE [%d, %zu, %zu, %zu])\n", dump, m->n_layers, B, T,
               heads);
    }

    timed(m, 0, batches, nb, B, T, out, 0.2); /* warm-up */
    run_result fast = timed(m, 0, batches, nb, B, T, out, seconds);
    double tok_s = (double)fast.batches * (double)(B * T) / fast.elapsed;
    double tl_s = tok_s * m->n_layers;
    printf("eh_hash: %" PRIu64 " batches in %.2f s: %.3f M tokens/s (all %d layers), "
           "%.3f M token-layers/s, %.1f M row ids/s, %.2f ns per token-layer\n",
           fast.batches, fast.elapsed, tok_s / 1e6, m->n_layers, tl_s / 1e6,
           tl_s * (double)heads / 1e6, 1e9 / tl_s);
    double plain_tok_s = 0;
    if (run_plain) {
        run_result pr = timed(m, 1, batches, nb, B, T, out, seconds);
        plain_tok_s = (double)pr.batches * (double)(B * T) / pr.elapsed;
        printf("plain:   %" PRIu64 " batches in %.2f s: %.3f M tokens/s (all %d layers), "
               "%.2f ns per token-layer; eh_hash/plain %.2fx\n",
               pr.batches, pr.elapsed, plain_tok_s / 1e6, m->n_layers,
               1e9 / (plain_tok_s * m->n_layers), tok_s / plain_tok_s);
    }
    printf("bench: impl=c tokens_per_s=%.0f token_layers_per_s=%.0f row_ids_per_s=%.0f "
           "plain_tokens_per_s=%.0f batch=%zux%zu layers=%d heads=%zu seconds=%.2f\n",
           tok_s, tl_s, tl_s * (double)heads, plain_tok_s, B, T, m->n_layers, heads,
           fast.elapsed);

    for (size_t i = 0; i < nb; i++)
        free(batches[i]);
    free(batches);
    free(out);
    free(ref);
    eh_model_free(m);
    return 0;
}
