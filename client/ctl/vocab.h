/* vocab.h: the Engram compression table ("compress-vocab") built from a
 * HuggingFace tokenizer.json.
 *
 * Engram hashes n-grams of *compressed* token ids: ids whose single-token
 * text is the same after normalisation share one compressed id. The table is
 * built as DeepSeek's code builds it:
 *
 *   for id in 0..max_id:
 *     text = decode([id])                      (byte-level BPE decode)
 *     key  = raw token string      if text contains U+FFFD
 *          = normalize(text)       otherwise, or text if that is empty
 *     lookup[id] = index of key in order of first appearance
 *
 * Two rules differ only in decode():
 *   VOCAB_RULE_V41      the tokenizer's raw backend decode, as DeepSeek-V4.1
 *                       engines build it (vLLM build_compressed_token_map:
 *                       backend_tokenizer.decode, no clean-up);
 *   VOCAB_RULE_DEMO_V1  transformers' tokenizer.decode, as the Engram demo
 *                       (CompressedTokenizer._build_lookup_table in
 *                       engram_demo_v1.py) builds it: the raw decode, then
 *                       clean_up_tokenization_spaces when the tokenizer
 *                       asks for it (" ." -> ".", " n't" -> "n't", ...).
 * On a tokenizer whose config turns the clean-up off (DeepSeek-V3's does)
 * both rules give the same table.
 *
 * normalize() is the reference's tokenizers.normalizers.Sequence:
 *   NFKC, NFD, StripAccents (drop Mn/Mc/Me), Lowercase (Rust
 *   char::to_lowercase), Replace(/[ \t\r\n]+/, " "), Replace(/^ $/, SENTINEL),
 *   Strip (Unicode White_Space, both ends), Replace(SENTINEL, " ")
 * so a text that is exactly one space after collapsing stays " ".
 *
 * Ids: the model vocabulary (model.vocab, {token: id}) plus added_tokens
 * ([{id, content}]); an added token overrides a vocab entry with the same id
 * and decodes to its content as-is. An id in 0..max_id that has no token (a
 * hole) decodes to "" as tokenizer.decode does, so all holes share the key
 * "" (the DeepSeek-V3 tokenizer has no holes: 128,815 ids, 0..128814). */
#ifndef ENGRAM_VOCAB_H
#define ENGRAM_VOCAB_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

typedef enum vocab_rule {
    VOCAB_RULE_V41 = 0,
    VOCAB_RULE_DEMO_V1 = 1,
} vocab_rule;

/* How to build a table; NULL means the V4.1 rule. */
typedef struct vocab_options {
    vocab_rule rule;
    int clean_up_spaces; /* VOCAB_RULE_DEMO_V1: the tokenizer's
                          * clean_up_tokenization_spaces (read from its
                          * tokenizer_config.json by the caller) */
} vocab_options;

typedef struct vocab_stats {
    size_t ids;        /* table entries: max_id + 1 */
    size_t compressed; /* distinct keys: max(lookup) + 1 */
} vocab_stats;

/* Reads a HuggingFace tokenizer.json and writes {"lookup_table": [...]}
 * (one integer per id 0..max_id) to out_path. Fills *stats when stats is not
 * NULL. Returns 0, or -1 with a message naming the problem (file, JSON
 * position, missing model.vocab, bad id, write error) in err. */
int vocab_compress_file(const char *tokenizer_json, const vocab_options *opt,
                        const char *out_path, vocab_stats *stats, char *err, size_t errlen);

/* Reads a tokenizer.json and builds its table: vocab_build_lookup on the
 * file, with the file named in errors. */
int64_t *vocab_build_file(const char *tokenizer_json, const vocab_options *opt, size_t *n,
                          size_t *compressed, char *err, size_t errlen);

/* Builds the table in memory from a parsed tokenizer.json. Returns a malloc'd
 * array of *n entries (*n = max_id + 1) and sets *compressed to the number of
 * distinct keys; NULL with a message in err on failure. */
int64_t *vocab_build_lookup(json_t *tok, const vocab_options *opt, size_t *n,
                            size_t *compressed, char *err, size_t errlen);

/* Writes {"lookup_table": [...]} to path; 0, or -1 with err set (nothing
 * is left at path). */
int vocab_write_table(const char *path, const int64_t *lookup, size_t n, char *err,
                      size_t errlen);

/* transformers' clean_up_tokenization on UTF-8 text: " ." " ?" " !" " ,"
 * " ' " " n't" " 'm" " 's" " 've" " 're" lose their space (" ' " becomes
 * "'"), each replacement over the whole text in that order, as Python's
 * str.replace does. Returns a malloc'd NUL-terminated string, its length in
 * *out_len; NULL if out of memory. */
char *vocab_clean_up_spaces(const char *text, size_t len, size_t *out_len);

/* The reference normaliser on len bytes of valid UTF-8 (NULs allowed).
 * Returns a malloc'd NUL-terminated string and its length in *out_len, or
 * NULL when the input is not valid UTF-8 or memory runs out. Does not apply
 * the empty-result fallback: an empty result is returned as "". */
char *vocab_normalize(const char *text, size_t len, size_t *out_len);

/* Byte-level BPE decode of one token string, as tokenizer.decode([id]) does:
 * each char maps back to a byte through GPT-2's bytes_to_unicode table (a
 * token with a char outside the table keeps its own UTF-8 bytes), then the
 * bytes are decoded as UTF-8 with every maximal invalid subpart replaced by
 * U+FFFD (Python errors='replace' / Rust from_utf8_lossy). Returns a malloc'd
 * NUL-terminated string, its length in *out_len; NULL if out of memory. */
char *vocab_byte_decode(const char *token, size_t len, size_t *out_len);

#endif
