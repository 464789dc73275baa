/* fuzz_common.h - what the segment harnesses and the seed generator share:
 * the capacity and configuration of the segments they build, and reading a
 * segment's image. */
#ifndef DYNSHIM_FUZZ_COMMON_H
#define DYNSHIM_FUZZ_COMMON_H

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dynshim/coord.h"
#include "dynshim/segment.h"

/* The body harness works on a small segment so that every byte of it is
 * within reach of the fuzzer's mutations. */
static inline void fz_body_shape(struct ds_config *cfg, struct ds_capacity *cap)
{
        ds_config_defaults(cfg);
        cfg->pool_size = 4;
        cfg->soft_limit = 2;
        cfg->max_limit = 3;
        cap->max_procs = 4;
        cap->max_leases = 8;
        cap->max_scrapers = 4;
}

/* Maps the whole segment `name` read-write; NULL on error. */
static inline void *fz_map(const char *name, size_t *size)
{
        int fd = shm_open(name, O_RDWR, 0);
        if (fd < 0)
                return NULL;
        struct stat st;
        void *m = MAP_FAILED;
        if (fstat(fd, &st) == 0 && st.st_size > 0)
                m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (m == MAP_FAILED)
                return NULL;
        *size = (size_t)st.st_size;
        return m;
}

/* A copy of a mapped segment that any machine accepts: the creator's PID
 * namespace is cleared (a zero identity skips that check). */
static inline void *fz_portable_copy(const void *map, size_t size)
{
        void *c = malloc(size);
        if (!c)
                return NULL;
        memcpy(c, map, size);
        struct ds_header *h = c;
        h->pidns_dev = 0;
        h->pidns_ino = 0;
        return c;
}

#endif
