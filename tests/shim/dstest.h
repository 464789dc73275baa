/* dstest.h - what the shim's test programs that link libpq share: the
 * failure macro, the start of main and creating a test's segment. */
#ifndef DYNSHIM_DSTEST_H
#define DYNSHIM_DSTEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dynshim/coord.h"

/* Fails the test: the condition, the sentence, exit status 1. */
#define CHECK(cond, ...)                                                                           \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);            \
                        fprintf(stderr, __VA_ARGS__);                                              \
                        fprintf(stderr, "\n");                                                     \
                        exit(1);                                                                   \
                }                                                                                  \
        } while (0)

/* (Re)creates segment with cfg, the default capacity and mode 0600. */
static inline void dstest_create_pool(const char *segment, const struct ds_config *cfg)
{
        struct ds_capacity cap;
        ds_capacity_defaults(&cap);
        struct ds_create_opts o = {.mode = 0600, .group = (gid_t)-1, .force = 1};
        char err[256];
        int rc = ds_segment_create(segment, cfg, &cap, &o, err, sizeof(err));
        CHECK(rc == 0, "create %s: %s", segment, err);
}

/* The start of main: one CASE argument, the test's segment from
 * DYNSHIM_SEGMENT (returned), and the shim preloaded. */
static inline const char *dstest_start(int argc, char **argv)
{
        CHECK(argc == 2, "usage: %s CASE", argv[0]);
        const char *segment = getenv("DYNSHIM_SEGMENT");
        CHECK(segment && *segment, "DYNSHIM_SEGMENT must name the test's segment");
        CHECK(getenv("LD_PRELOAD") && strstr(getenv("LD_PRELOAD"), "libdynshim"),
              "the shim must be preloaded");
        return segment;
}

#endif
