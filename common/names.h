/* names.h: the one rule for names of tables and models: 1..128 characters
 * of [A-Za-z0-9._-], so a name is safe in a key, a path, a log line and a
 * metric label alike. */
#ifndef ENGRAM_COMMON_NAMES_H
#define ENGRAM_COMMON_NAMES_H

#define ENGRAM_NAME_MAX 128

int engram_name_valid(const char *name);

#endif
