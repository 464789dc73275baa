/* coord.h - the coordinator: a pool of connection slots in a POSIX
 * shared-memory segment, shared by every process that attaches to it.
 *
 * Every function returns 0 or a negative errno value unless it says
 * otherwise. Functions that can fail for a reason a person must read take
 * (err, errlen) and write one sentence there. No function prints, exits or
 * aborts: the shim links this code into its host programs. */
#ifndef DYNSHIM_COORD_H
#define DYNSHIM_COORD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "dynshim/config.h"
#include "dynshim/policy.h"

#define DS_DEFAULT_SEGMENT "/dynshim"

typedef struct ds_handle ds_handle;

/* A slot held (or, inside the coordinator, a wait). Copyable; compare ids. */
struct ds_lease_ref {
        uint32_t idx; /* index in the lease table */
        uint64_t id;  /* unique id of the grant; 0 means none */
};

/* The segment name to use: name if not NULL/empty, else $DYNSHIM_SEGMENT,
 * else DS_DEFAULT_SEGMENT. Never NULL. */
const char *ds_segment_name(const char *name);

struct ds_create_opts {
        mode_t mode; /* permission bits; 0 means 0600 */
        gid_t group; /* (gid_t)-1: the creator's group */
        int force;   /* 1: replace an existing segment (marked destroyed) */
};

/* Creates and publishes a segment: O_EXCL, initialise, magic last.
 * -EEXIST if one exists and !force; -EINVAL for a bad cfg or cap. */
int ds_segment_create(const char *name, const struct ds_config *cfg, const struct ds_capacity *cap,
                      const struct ds_create_opts *opts, char *err, size_t errlen);

/* Marks the segment destroyed for processes still attached, then unlinks
 * it. -ENOENT if there is none. A segment that cannot be validated is
 * unlinked all the same. */
int ds_segment_destroy(const char *name, char *err, size_t errlen);

#define DS_ATTACH_CREATE 1u /* no segment yet: create one with the defaults */

/* Attaches to the segment, validating its header (magic, layout, sizes,
 * lock type, word size, capacities, owner, PID namespace) and its bounds.
 * Errors: -ENOENT (none, and !DS_ATTACH_CREATE), -EPROTO (not a valid
 * segment: the reason says which field), -EACCES (owner or mode), -EXDEV
 * (another PID namespace), or a system error. */
int ds_attach(const char *name, unsigned flags, ds_handle **out, char *err, size_t errlen);

/* Releases every lease this process holds through h, withdraws the
 * process from the segment and unmaps it. NULL is allowed. Not for use by
 * a forked child on a parent's handle (it only unmaps there). */
void ds_detach(ds_handle *h);

/* The scraper name this process acquires slots under. Before the first
 * acquire; later calls return -EBUSY. NULL or "" is refused. Longer names
 * than DS_NAME_MAX-1 bytes are truncated. */
int ds_set_scraper(ds_handle *h, const char *scraper);

/* Takes a slot for this process's scraper, waiting up to timeout_ms
 * (UINT32_MAX: the pool's wait_timeout). Waiting sleeps on a futex; the
 * releaser hands the slot over directly. -ETIMEDOUT when none came,
 * -ENOSPC when the tables are full, -ESTALE when the segment was destroyed,
 * -EIO when the lock could not be taken. On -ETIMEDOUT, *why (if not NULL)
 * describes the pool's state. */
int ds_acquire(ds_handle *h, uint32_t timeout_ms, struct ds_lease_ref *out, char *why,
               size_t whylen);

/* ds_acquire with flags. DS_ACQUIRE_HOLDS: the calling thread holds a slot
 * of this process that it cannot give back while it waits (a connection in
 * an open transaction): its wait goes before those of its scraper's threads
 * that hold none, and counts as hold-and-wait. When every slot the waiters
 * could get is held that way for deadlock_timeout, the newest such wait
 * fails with -EDEADLK, *why saying so. */
#define DS_ACQUIRE_HOLDS 1u
int ds_acquire_ex(ds_handle *h, uint32_t timeout_ms, unsigned flags, struct ds_lease_ref *out,
                  char *why, size_t whylen);

/* Gives a slot back. -EPERM if the lease belongs to another process (a
 * forked child releasing its parent's lease gives nothing back), -ENOENT
 * if it is no longer held (reclaimed, or released twice). */
int ds_release(ds_handle *h, const struct ds_lease_ref *lease);

/* Gives a slot back for a reason counted in the statistics (idle or
 * surplus releases); ds_release is ds_release_for(..., DS_RELEASE_NORMAL).
 * With DS_RELEASE_MAY_RUN or'ed into reason the caller could not see the
 * connection's backend end: if the backend recorded for the slot may still
 * run, the slot drains (counted against pool_size) until it is gone. */
#define DS_RELEASE_MAY_RUN 0x100
int ds_release_for(ds_handle *h, const struct ds_lease_ref *lease, int reason);

/* What this process should give back now. */
struct ds_advice {
        uint32_t give_back;     /* slots to release now (0: keep everything) */
        int reason;             /* enum ds_release_reason */
        uint64_t min_unused_ns; /* only connections unused this long (ds_policy_min_unused_ns) */
        uint32_t period_ms;     /* ask again within this (ds_policy_advice_period_ms) */
        int active;             /* the scraper's state */
        uint32_t held;          /* slots this process holds */
        uint32_t limit;         /* the scraper's limit */
        uint32_t waiting;       /* connects of any scraper waiting for a slot now */
};

/* Computes the advice for this process under the lock (recomputing limits
 * first): an idle release, a surplus, or, while connects wait, a handover
 * (DS_RELEASE_HANDOVER: the slots go first to waiters of this scraper). A
 * surplus give_back is reserved for this process: release them with
 * ds_release_for(DS_RELEASE_SURPLUS), and hand back the ones it could not
 * release with ds_advice_unused(). */
int ds_advise(ds_handle *h, struct ds_advice *out);
void ds_advice_unused(ds_handle *h, uint32_t n);

/* Calls fn(arg) from the process's life thread every period_ms and
 * whenever the pool asks this process to give slots back. fn runs with
 * every signal blocked; it may call any function here. Takes effect once
 * the process is registered (at its first acquire); NULL fn stops it. */
void ds_set_advice_handler(ds_handle *h, void (*fn)(void *), void *arg, uint32_t period_ms);

/* Counts a transparent reconnect of this process's scraper. */
void ds_note_reconnect(ds_handle *h);

/* Connection reuse: this process parked (+1) or took back / closed (-1) a
 * finished connection that keeps its slot; reuse also counts a hit. Parked
 * connections are shown by ds_stats_get, and the processes that have any
 * are poked whenever a connect starts to wait (they give them back first). */
void ds_note_parked(ds_handle *h, int delta, int reuse);

/* Connects of any scraper waiting for a slot now (a racy read, no lock). */
uint32_t ds_waiting_now(ds_handle *h);

/* Marks a libpq call of this process starting (+1) or ending (-1): a call
 * in flight keeps the scraper active. No lock, no system call. */
void ds_inflight_add(ds_handle *h, int delta);

/* Records libpq activity of this process now (cheap: no lock, no system
 * call when now_ns is given; 0 reads the coarse clock). */
void ds_touch(ds_handle *h, uint64_t now_ns);

/* Reads / replaces the live configuration. ds_set_config validates it
 * against the segment's capacity, applies it and hands freed capacity to
 * waiters. A smaller pool_size stops new grants until usage is below it. */
int ds_get_config(ds_handle *h, struct ds_config *cfg);
int ds_set_config(ds_handle *h, const struct ds_config *cfg, char *err, size_t errlen);

/* Applies n "key=value" pairs to the live configuration as one change under
 * the lock (no concurrent change is lost), validating the result as a
 * whole. On success *out (if not NULL) is the new configuration. -EINVAL
 * with the reason if a pair or the result is invalid: nothing changes. */
int ds_update_config(ds_handle *h, const char *const *pairs, size_t n, struct ds_config *out,
                     char *err, size_t errlen);

/* ds_update_config with per-scraper overrides: set holds "key=value" pairs,
 * pool keys or "scraper.NAME.KEY=VALUE" (KEY: max, reserve, weight,
 * idle_release); unset holds "scraper.NAME.KEY" or "scraper.NAME" (all of
 * its overrides). Everything is applied as one change under the lock and
 * validated as a whole (each override in itself, the sum of all reserves
 * below pool_size); nothing changes on error: -EINVAL with the reason, or
 * -ENOSPC when a new scraper record does not fit. An override may name a
 * scraper no process uses yet: its record is created and kept. */
int ds_update(ds_handle *h, const char *const *set, size_t nset, const char *const *unset,
              size_t nunset, struct ds_config *out, char *err, size_t errlen);

/* Records the server backend (PQbackendPID) of the connection that uses a
 * slot of this process, and, when that backend is a process of this host,
 * its start time. When the process dies (or detaches) while the backend may
 * still run, the slot drains: it stays counted against pool_size until the
 * backend is gone (seen in /proc for a local backend; for a remote one,
 * ds_drain_gone, or after a bound). -ENOENT if the lease is not held. */
int ds_lease_set_backend(ds_handle *h, const struct ds_lease_ref *lease, int32_t backend_pid);

/* The backend PIDs of draining slots not visible on this host (up to max). */
int ds_drain_list(ds_handle *h, int32_t *pids, size_t max, size_t *n);

/* The server says these backends are gone: frees the draining slots
 * (not visible on this host) that wait for them and hands them to waiters.
 * Returns how many were freed, or a negative errno. */
int ds_drain_gone(ds_handle *h, const int32_t *pids, size_t n);

/* Cluster mode (docs/cluster.md). on=1 makes this process (registered
 * under its scraper name, which must be set) the pool's cluster agent:
 * from then on the pool grants slots only while this process lives; once
 * it is gone, nothing new is granted until another process takes the gate.
 * With own not NULL the agent also takes a slot for its own connection at
 * once, ahead of every waiting connect: -EAGAIN when the pool has none
 * free (the gate is taken all the same; ds_acquire waits for one), -ENOSPC
 * when the lease table is full. on=0 clears the gate. A later
 * configuration change keeps it. */
int ds_cluster_gate(ds_handle *h, int on, struct ds_lease_ref *own);

/* The gate's state: 0 none, 1 its agent lives, 2 its agent is gone (no new
 * grants), or a negative errno. */
int ds_cluster_agent(ds_handle *h);

/* Reclaims the leases of dead processes and recomputes limits. Returns the
 * number of processes reclaimed, or a negative errno. */
int ds_reclaim(ds_handle *h);

/* A consistent copy of the pool, taken under the lock. */
struct ds_scraper_stats {
        char name[DS_NAME_MAX];
        int active;
        uint32_t held, limit, waiting, procs;
        uint64_t connects, releases, idle_releases, surplus_releases, reconnects, reclaimed;
        uint64_t timeouts, waits, wait_ns_total, wait_ns_max;
        uint64_t handovers, deadlocks;
        struct ds_override ov; /* its overrides (ov.flags 0: none) */
        uint32_t claimed;      /* the reserve it claims now (0: none) */
        int idle_release;      /* its effective idle_release */
        uint32_t parked;       /* connections its live processes keep parked */
        uint64_t reuses;       /* connects served with a parked connection */
};

struct ds_stats {
        struct ds_config cfg;
        struct ds_capacity cap;
        uint32_t held, waiting, procs, n_active;
        uint32_t draining; /* slots of dead processes whose backend still runs (in held) */
        uint64_t grants, peak_held, repairs, reclaimed_procs, generation;
        int agent_state; /* cluster gate: 0 none, 1 agent lives, 2 agent gone */
        size_t segment_size;
        size_t n_scrapers;
        struct ds_scraper_stats *scrapers; /* n_scrapers, by name; malloc'd */
};

int ds_stats_get(ds_handle *h, struct ds_stats *out);
void ds_stats_free(struct ds_stats *s);

/* Checks every invariant of the segment (counters match the lease table,
 * indices in range, names terminated; held may exceed pool_size only after
 * the cap was lowered, so that is not checked here). 0 if all hold, else -EPROTO with the first
 * violation. */
int ds_check(ds_handle *h, char *why, size_t whylen);

/* For tests, benchmarks and the CLI: the mapped header, and the lock. */
struct ds_header *ds_handle_header(ds_handle *h);
int ds_lock(ds_handle *h);
void ds_unlock(ds_handle *h);

/* The CLOCK_MONOTONIC time in ns. */
uint64_t ds_now_ns(void);

#endif
