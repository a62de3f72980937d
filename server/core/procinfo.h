/* procinfo.h: the process's own figures as metrics: the build, uptime and
 * jemalloc's memory counters (0 without jemalloc, as under sanitizers). */
#ifndef ENGRAM_SERVER_PROCINFO_H
#define ENGRAM_SERVER_PROCINFO_H

/* Registers the figures; uptime counts from here. */
void procinfo_setup(void);
void procinfo_teardown(void);

#endif
