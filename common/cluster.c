/* cluster.c: parsing, validating and writing cluster maps (cluster.h). */
#include "cluster.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"

static int parse_replicas(engram_cluster *c, uint32_t i, json_t *shard, char *err, size_t errlen)
{
    json_t *reps = json_is_object(shard) ? json_object_get(shard, "replicas") : NULL;
    if (!json_is_array(reps) || json_array_size(reps) == 0 ||
        json_array_size(reps) > CLUSTER_MAX_REPLICAS) {
        snprintf(err, errlen, "cluster map: shards[%u] needs \"replicas\": an array of 1..%d addresses",
                 i, CLUSTER_MAX_REPLICAS);
        return -1;
    }
    c->replicas[i] = (uint32_t)json_array_size(reps);
    for (uint32_t r = 0; r < c->replicas[i]; r++) {
        json_t *a = json_array_get(reps, r);
        const char *s = json_is_string(a) ? json_string_value(a) : NULL;
        if (!s || !*s || strlen(s) > CLUSTER_ADDR_MAX || !strchr(s, ':')) {
            snprintf(err, errlen, "cluster map: shards[%u].replicas[%u] must be a \"host:port\" string", i, r);
            return -1;
        }
        snprintf(c->addr[i][r], sizeof c->addr[i][r], "%s", s);
    }
    return 0;
}

static int parse_root(engram_cluster *c, json_t *root, char *err, size_t errlen)
{
    json_t *name = json_object_get(root, "name"), *pl = json_object_get(root, "placement");
    json_t *shards = json_object_get(root, "shards");
    if (!json_is_string(name) || !engram_name_valid(json_string_value(name))) {
        snprintf(err, errlen, "cluster map: \"name\" must be 1-128 characters of [A-Za-z0-9._-]");
        return -1;
    }
    snprintf(c->name, sizeof c->name, "%s", json_string_value(name));
    if (pl && !(json_is_string(pl) && strcmp(json_string_value(pl), "mod") == 0)) {
        snprintf(err, errlen, "cluster map: \"placement\" must be \"mod\" (row r on shard r mod S)");
        return -1;
    }
    if (!json_is_array(shards) || json_array_size(shards) == 0 ||
        json_array_size(shards) > CLUSTER_MAX_SHARDS) {
        snprintf(err, errlen, "cluster map: \"shards\" must be an array of 1..%d shards", CLUSTER_MAX_SHARDS);
        return -1;
    }
    c->shards = (uint32_t)json_array_size(shards);
    for (uint32_t i = 0; i < c->shards; i++)
        if (parse_replicas(c, i, json_array_get(shards, i), err, errlen))
            return -1;
    return 0;
}

engram_cluster *cluster_parse(const char *json, size_t len, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, errlen, "cluster map: invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    engram_cluster *c = calloc(1, sizeof *c);
    int rc = json_is_object(root) ? parse_root(c, root, err, errlen) : -1;
    if (!json_is_object(root))
        snprintf(err, errlen, "cluster map: the document must be a JSON object");
    json_decref(root);
    if (rc) {
        free(c);
        return NULL;
    }
    return c;
}

engram_cluster *cluster_load(const char *path, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, errlen, "cluster map %s: %s (line %d)", path, je.text, je.line);
        return NULL;
    }
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    engram_cluster *c = cluster_parse(text, strlen(text), err, errlen);
    free(text);
    return c;
}

void cluster_free(engram_cluster *c)
{
    free(c);
}

engram_cluster *cluster_single(const char *addr)
{
    engram_cluster *c = calloc(1, sizeof *c);
    snprintf(c->name, sizeof c->name, "single");
    c->shards = 1;
    c->replicas[0] = 1;
    snprintf(c->addr[0][0], sizeof c->addr[0][0], "%s", addr);
    return c;
}

char *cluster_to_json(const engram_cluster *c)
{
    json_t *shards = json_array();
    for (uint32_t i = 0; i < c->shards; i++) {
        json_t *reps = json_array();
        for (uint32_t r = 0; r < c->replicas[i]; r++)
            json_array_append_new(reps, json_string(c->addr[i][r]));
        json_array_append_new(shards, json_pack("{s:o}", "replicas", reps));
    }
    json_t *root = json_pack("{s:s, s:s, s:o}", "name", c->name, "placement", "mod", "shards", shards);
    char *s = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    return s;
}
