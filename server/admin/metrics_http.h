/* metrics_http.h: the Prometheus endpoint. GET /metrics on --metrics-listen
 * answers the metrics registry (metric.h) in the text exposition format
 * 0.0.4; anything else is 404. libmicrohttpd serves it on its own thread, so a scrape
 * never waits behind a gRPC queue. */
#ifndef ENGRAM_SERVER_METRICS_HTTP_H
#define ENGRAM_SERVER_METRICS_HTTP_H

#include <stddef.h>

/* Binds HOST:PORT (an IPv4 or IPv6 literal or a name; "[::1]:9090" for
 * IPv6; port 0 picks a free one) and starts serving. Returns the bound
 * port, or 0 with err filled (the address and why). */
int metrics_http_setup(const char *listen, char *err, size_t errlen);
void metrics_http_teardown(void);

#endif
