# cb_manifest.sh: sourced by run_cluster_bench.sh and run_client_ab_bench.sh.
# write_cb_manifest FILE writes model "cb" (bf16, 8 heads x 64 dims, layers
# 1 and 15, an identity compression of 129280 ids; generated, since its
# lookup table is 129280 numbers long).
write_cb_manifest() {
  python3 - "$1" <<'PY'
import json, sys
manifest = {
    "name": "cb",
    "engram_vocab_size": [100003, 100019], "max_ngram_size": 3,
    "n_embed_per_ngram": 512, "n_head_per_ngram": 8,
    "layer_ids": [1, 15], "pad_id": 2, "seed": 0, "dtype": "bf16",
    "compression": {"lookup_table": list(range(129280))},
    "tables": {"1": "cb.l1", "15": "cb.l15"},
}
with open(sys.argv[1], "w") as f:
    json.dump(manifest, f)
PY
}
