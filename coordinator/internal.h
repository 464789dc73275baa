/* internal.h - the process-local handle on a segment, shared by segment.c
 * (attach, validation) and pool.c (locking, leases). */
#ifndef DYNSHIM_INTERNAL_H
#define DYNSHIM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "dynshim/coord.h"
#include "dynshim/segment.h"

struct ds_handle {
        char name[256];
        void *map;
        size_t size;
        struct ds_header *hdr;
        struct ds_proc *procs;
        struct ds_lease *leases;
        struct ds_scraper *scrapers;
        /* Private copy of the capacity, validated against the mapping's size
         * at attach. Every index is checked against it, never against the
         * header, which another process could overwrite. */
        struct ds_capacity cap;
        int mutex_kind; /* expected __kind of the segment's mutexes */

        pthread_mutex_t local; /* guards the fields below in this process */
        char scraper[DS_NAME_MAX];
        pid_t pid;         /* process that registered; 0 before */
        uint32_t proc_idx; /* its record, valid while pid == getpid() */
        /* The life thread holds procs[proc_idx].life for the process's life. */
        pthread_t life_tid;
        _Atomic uint32_t life_state; /* 0 starting, 1 holding, 2 failed */
        _Atomic uint32_t life_stop;  /* 1: unlock and exit */
        /* Called by the life thread (see ds_set_advice_handler). */
        void (*_Atomic advice_fn)(void *);
        void *_Atomic advice_arg;
        _Atomic uint32_t advice_period_ms;
        /* Scratch of the policy calls made under the segment's lock (one
         * allocation, sized by the capacity at attach). */
        struct ds_pick_entry *pick; /* [max_scrapers] */
        uint32_t *reserve;          /* [max_scrapers] */
        struct ds_wait_proc *wproc; /* [max_procs] */
};

int ds_mutex_init_shared(pthread_mutex_t *m);
int ds_expected_mutex_kind(void);
void ds_pidns_identity(uint64_t *dev, uint64_t *ino);

#endif
