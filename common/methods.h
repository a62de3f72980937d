/* methods.h: the gRPC method paths of engram.v1 (proto/engram/v1/
 * engram.proto) and of the standard health service, written once for the
 * server's dispatch table and the client's registered calls, so the two
 * sides can never disagree on a name. */
#ifndef ENGRAM_COMMON_METHODS_H
#define ENGRAM_COMMON_METHODS_H

#define METHOD_LOOKUP "/engram.v1.Lookup/Lookup"

#define METHOD_ADMIN(name) "/engram.v1.Admin/" name
#define METHOD_LIST_TABLES METHOD_ADMIN("ListTables")
#define METHOD_GET_TABLE METHOD_ADMIN("GetTable")
#define METHOD_IMPORT METHOD_ADMIN("Import")
#define METHOD_PUT_MANIFEST METHOD_ADMIN("PutManifest")
#define METHOD_GET_MANIFEST METHOD_ADMIN("GetManifest")
#define METHOD_LIST_MANIFESTS METHOD_ADMIN("ListManifests")
#define METHOD_ACTIVATE_VERSION METHOD_ADMIN("ActivateVersion")
#define METHOD_DROP_VERSION METHOD_ADMIN("DropVersion")
#define METHOD_GET_CLUSTER_MAP METHOD_ADMIN("GetClusterMap")
#define METHOD_DRAIN METHOD_ADMIN("Drain")
#define METHOD_UNDRAIN METHOD_ADMIN("Undrain")
#define METHOD_WARM METHOD_ADMIN("Warm")
#define METHOD_VERIFY METHOD_ADMIN("Verify")
#define METHOD_STATS METHOD_ADMIN("Stats")
#define METHOD_SET_LOG_LEVEL METHOD_ADMIN("SetLogLevel")
#define METHOD_LIST_LOCAL_TABLES METHOD_ADMIN("ListLocalTables")

/* grpc.health.v1: every method of the service starts with the prefix. */
#define METHOD_HEALTH_PREFIX "/grpc.health.v1."
#define METHOD_HEALTH_CHECK METHOD_HEALTH_PREFIX "Health/Check"
#define METHOD_HEALTH_WATCH METHOD_HEALTH_PREFIX "Health/Watch"

#endif
