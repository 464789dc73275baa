/* segment.h - layout of the shared-memory segment. Internal to the
 * coordinator; visible to tests and benchmarks, which inspect and corrupt it.
 *
 * The lease table is the source of truth. Every counter marked "cache" is
 * derived from it and rebuilt by the next locker when a process died while
 * holding the lock (EOWNERDEAD). A lease record is written field by field
 * with its state written last, so a crash at any instruction leaves a lease
 * table that still says exactly who holds what. */
#ifndef DYNSHIM_SEGMENT_H
#define DYNSHIM_SEGMENT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "dynshim/config.h"
#include "dynshim/policy.h"

#define DS_MAGIC          UINT64_C(0x314d4853594e4444) /* "DDNYSHM1" */
#define DS_LAYOUT_VERSION 5u
#define DS_ALIGN          64u

enum ds_lease_state {
        DS_LEASE_FREE = 0,    /* unused */
        DS_LEASE_WAITING = 1, /* a connect waits on `wake` for a slot */
        DS_LEASE_HELD = 2,    /* a slot, counted against pool_size */
        /* The process that held the slot is gone but its server backend may
         * still run (a query outlives its client): counted against
         * pool_size, owned by no process, freed once the backend is gone. */
        DS_LEASE_DRAINING = 3,
};

/* One attached process. */
struct ds_proc {
        /* Robust, process-shared; locked by the process's life thread for as
         * long as pid != 0. The kernel marks it owner-dead when the process
         * dies or execs, which is how others learn of it, safe against PID
         * reuse. */
        pthread_mutex_t life;
        int32_t pid;                       /* 0: record free. Written last on register. */
        uint32_t scraper;                  /* index into the scraper table, < max_scrapers */
        uint64_t since_ns;                 /* CLOCK_MONOTONIC time of registration */
        uint32_t held;                     /* cache: HELD leases of this process */
        uint32_t waiting;                  /* cache: WAITING leases of this process */
        _Atomic uint32_t inflight;         /* libpq calls in flight (shim) */
        _Atomic uint32_t notify;           /* futex word: bumped to make the process
                                              ask for release advice now */
        _Atomic uint64_t last_activity_ns; /* last libpq activity (shim) */
        _Atomic uint32_t parked;           /* finished connections parked for reuse (shim);
                                              each holds one of this process's leases */
} __attribute__((aligned(DS_ALIGN)));

/* One slot held, or one connect waiting for a slot. */
struct ds_lease {
        _Atomic uint32_t state; /* enum ds_lease_state; written last */
        /* futex word of a wait: 0 waiting, 1 granted (set after state HELD),
         * 2 abandoned by a waiter that could not take the lock, 3 failed
         * to break a deadlock (still WAITING: its waiter withdraws it) */
        _Atomic uint32_t wake;
        uint32_t proc;     /* index into the process table */
        uint32_t scraper;  /* index into the scraper table */
        uint64_t id;       /* unique for the segment's life; 0 when free */
        uint64_t ticket;   /* arrival order (first come first served) */
        uint64_t since_ns; /* start of the wait, then time of the grant;
                              DRAINING: time it started draining */
        /* The server backend of the connection that uses the slot (set by
         * its owner once connected, 0: none known) and, when that backend is
         * a process of this host, its start time in clock ticks since boot
         * (field 22 of /proc/PID/stat; 0: not visible here). */
        _Atomic int32_t backend_pid;
        /* WAITING: 1 if the waiting thread holds a slot of its process that
         * it cannot give back (an open transaction): hold-and-wait */
        uint32_t holds;
        _Atomic uint64_t backend_start;
};

/* One scraper: a named group of processes, and its statistics. */
struct ds_scraper {
        char name[DS_NAME_MAX]; /* NUL-terminated; "" means the record is free */
        uint32_t held;          /* cache: HELD leases of its processes */
        uint32_t waiting;       /* cache: WAITING leases */
        uint32_t procs;         /* cache: live processes registered under it */
        uint32_t limit;         /* limit from the last recomputation */
        uint32_t active;        /* state from the last recomputation (0/1) */
        /* Configuration: set by dyncoord --set scraper.NAME.KEY=VALUE,
         * validated (alone and with every other record's reserve) before it
         * is written. A record with flags != 0 is never recycled. Kept in
         * the same cache line as the fields every acquire reads. */
        struct ds_override ov;
        uint32_t claimed;                  /* reserve claimed at the last recomputation (0: none) */
        _Atomic uint32_t inflight;         /* sum of its live processes' inflight */
        _Atomic uint64_t last_activity_ns; /* newest activity of any process */
        /* Statistics: monotonic, never decremented. */
        uint64_t connects;         /* slots granted */
        uint64_t releases;         /* slots given back by their owner */
        uint64_t idle_releases;    /* slots taken back because it was idle */
        uint64_t surplus_releases; /* slots given back above its limit */
        uint64_t reconnects;       /* transparent reconnects after a release */
        uint64_t reuses;           /* connects served with a parked connection */
        uint64_t reclaimed;        /* slots reclaimed from dead processes */
        uint64_t timeouts;         /* connects that waited wait_timeout in vain */
        uint64_t waits;            /* connects that had to wait */
        uint64_t wait_ns_total;    /* total time those waited */
        uint64_t wait_ns_max;      /* longest wait */
        uint64_t handovers;        /* slots handed over to a waiter while unused */
        uint64_t deadlocks;        /* connects failed to break a hold-and-wait */
        uint64_t last_used_ns;     /* last event; picks a record to recycle */
        /* Scratch of the grant pass, valid only inside it (under the lock). */
        uint64_t oldest_ticket;
        uint32_t oldest_idx;
        uint32_t serves;          /* notify_handover: a release of its slots serves a waiter */
        uint32_t surplus_pending; /* cache: surplus slots its processes promised
                                     to give back; rebuilt as 0 */
        /* Scratch of the recomputation with overrides (ds_policy_limits). */
        struct ds_policy_scraper pol;
} __attribute__((aligned(DS_ALIGN)));

struct ds_header {
        /* Identity and format signature, fixed at creation. */
        uint64_t magic; /* DS_MAGIC, written last at creation */
        uint32_t layout_version;
        uint32_t header_size;  /* sizeof(struct ds_header) */
        uint32_t proc_size;    /* sizeof(struct ds_proc) */
        uint32_t lease_size;   /* sizeof(struct ds_lease) */
        uint32_t scraper_size; /* sizeof(struct ds_scraper) */
        uint32_t mutex_size;   /* sizeof(pthread_mutex_t) */
        uint32_t mutex_align;  /* _Alignof(pthread_mutex_t) */
        uint32_t word_size;    /* sizeof(void *) */
        struct ds_capacity cap;
        uint32_t creator_uid;
        uint64_t total_size; /* bytes of the whole segment */
        uint64_t pidns_dev;  /* PID namespace of the creator (st_dev, st_ino */
        uint64_t pidns_ino;  /*   of /proc/self/ns/pid) */
        uint64_t generation; /* random, new for every creation */
        uint64_t created_realtime_s;
        /* Set (never cleared) just before the segment is unlinked; processes
         * still attached notice and stop using it. */
        _Atomic uint32_t destroyed;

        /* Robust, process-shared; guards every field below and the tables. */
        pthread_mutex_t lock;

        struct ds_config cfg; /* validated before it is written */
        uint32_t held;        /* cache: HELD and DRAINING leases; <= pool_size
                                 when granted */
        /* cache: DRAINING leases; atomic because waiters read it without
         * the lock, to look at draining slots more often */
        _Atomic uint32_t draining;
        uint32_t waiting;               /* cache: WAITING leases */
        uint32_t n_active;              /* active scrapers at the last recomputation */
        uint32_t lease_hwm;             /* 1 + highest lease index in use, <= max_leases */
        uint32_t proc_hwm;              /* 1 + highest process index in use, <= max_procs */
        uint32_t scraper_hwm;           /* 1 + highest scraper index in use, <= max_scrapers */
        uint64_t next_lease_id;         /* source of ds_lease.id; only grows */
        uint64_t next_ticket;           /* source of ds_lease.ticket; only grows */
        uint64_t last_realloc_ns;       /* time of the last limit recomputation */
        _Atomic uint64_t last_sweep_ns; /* time of the last dead-process sweep */
        uint64_t repairs;               /* locks recovered from a dead owner */
        uint64_t reclaimed_procs;       /* dead processes cleaned up */
        uint64_t grants;                /* slots granted in all */
        uint64_t peak_held;             /* highest `held` ever seen */
        /* When the waiters were first seen deadlocked (ds_policy_deadlock)
         * with no change since; 0: they are not. */
        uint64_t deadlock_since_ns;
} __attribute__((aligned(DS_ALIGN)));

/* Offsets and size of a segment with capacity cap. */
size_t ds_layout_procs_off(void);
size_t ds_layout_leases_off(const struct ds_capacity *cap);
size_t ds_layout_scrapers_off(const struct ds_capacity *cap);
size_t ds_layout_size(const struct ds_capacity *cap);

/* Validates the header of a segment image: buf holds the segment's first
 * `size` bytes (its whole mapping), aligned to DS_ALIGN; name is only used in
 * the message. Checks the format signature, the capacity against size, the
 * lock's kind, the configuration, the table bounds and the PID namespace;
 * reads nothing beyond the header. 0, or -EPROTO (not a valid segment) or
 * -EXDEV (another PID namespace) with one sentence in err. */
int ds_segment_validate(const void *buf, size_t size, const char *name, char *err, size_t errlen);

/* Parses the text of /proc/PID/stat: *is_postgres 1 when the command name
 * (field 2) is "postgres", *state the state letter (field 3), *start the
 * start time in clock ticks since boot (field 22). 0, or -EINVAL when buf
 * does not have that shape. */
int ds_parse_proc_stat(const char *buf, int *is_postgres, char *state, uint64_t *start);

/* The start time of process pid of this host if it is a live PostgreSQL
 * process (a server backend seen from its own host), else 0. */
uint64_t ds_local_backend_start(int32_t pid);

#endif
