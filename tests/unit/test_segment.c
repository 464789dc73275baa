/* test_segment.c - creating, validating and attaching segments; every
 * corrupt header field and out-of-range index is detected, and random
 * bytes never crash the caller. */
#include "testutil.h"

#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>

static const char *seg;

static void setup(void)
{
        seg = tu_segname("seg");
}

static void teardown(void)
{
        ds_segment_destroy(seg, NULL, 0);
}

TestSuite(segment, .init = setup, .fini = teardown, .timeout = 120);

/* Maps the whole segment file directly, bypassing validation. */
static void *map_raw(size_t *size)
{
        char path[128];
        snprintf(path, sizeof(path), "/dev/shm%s", seg);
        int fd = open(path, O_RDWR);
        cr_assert_geq(fd, 0, "open %s", path);
        struct stat st;
        cr_assert_eq(fstat(fd, &st), 0);
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        cr_assert_neq(m, MAP_FAILED);
        close(fd);
        *size = (size_t)st.st_size;
        return m;
}

static int attach_rc(char *err, size_t errlen)
{
        ds_handle *h = NULL;
        int rc = ds_attach(seg, 0, &h, err, errlen);
        if (rc == 0)
                ds_detach(h);
        return rc;
}

Test(segment, created_segment_validates_and_has_the_configuration)
{
        tu_create(seg, 12, 4, 6);
        ds_handle *h = tu_attach(seg, NULL);
        struct ds_header *H = ds_handle_header(h);
        cr_assert_eq(H->magic, DS_MAGIC);
        cr_assert_eq(H->layout_version, DS_LAYOUT_VERSION);
        cr_assert_eq(H->creator_uid, (uint32_t)geteuid());
        struct ds_config cfg;
        cr_assert_eq(ds_get_config(h, &cfg), 0);
        cr_assert_eq(cfg.pool_size, 12);
        cr_assert_eq(cfg.soft_limit, 4);
        cr_assert_eq(cfg.max_limit, 6);
        struct ds_stats st;
        cr_assert_eq(ds_stats_get(h, &st), 0);
        struct ds_capacity cap;
        ds_capacity_defaults(&cap);
        cr_assert_eq(st.segment_size, ds_layout_size(&cap));
        ds_stats_free(&st);
        tu_assert_consistent(h);
        ds_detach(h);
}

Test(segment, created_with_mode_0600_by_default)
{
        tu_create(seg, 20, 10, 15);
        char path[128];
        snprintf(path, sizeof(path), "/dev/shm%s", seg);
        struct stat st;
        cr_assert_eq(stat(path, &st), 0);
        cr_assert_eq(st.st_mode & 0777, 0600);
}

Test(segment, second_create_without_force_is_refused)
{
        tu_create(seg, 20, 10, 15);
        struct ds_config cfg;
        struct ds_capacity cap;
        ds_config_defaults(&cfg);
        ds_capacity_defaults(&cap);
        char err[256] = "";
        struct ds_create_opts o = {.mode = 0600, .group = (gid_t)-1, .force = 0};
        cr_assert_eq(ds_segment_create(seg, &cfg, &cap, &o, err, sizeof(err)), -EEXIST);
        cr_assert(strstr(err, "already exists"), "%s", err);
}

Test(segment, missing_segment_is_reported_or_created_with_defaults)
{
        char err[256] = "";
        cr_assert_eq(attach_rc(err, sizeof(err)), -ENOENT);
        cr_assert(strstr(err, "does not exist"), "%s", err);
        ds_handle *h = NULL;
        cr_assert_eq(ds_attach(seg, DS_ATTACH_CREATE, &h, err, sizeof(err)), 0, "%s", err);
        struct ds_config cfg, def;
        ds_config_defaults(&def);
        cr_assert_eq(ds_get_config(h, &cfg), 0);
        cr_assert_eq(memcmp(&cfg, &def, sizeof(cfg)), 0);
        ds_detach(h);
}

Test(segment, bad_names_are_refused)
{
        char err[256] = "";
        ds_handle *h = NULL;
        cr_assert_eq(ds_attach("noslash", 0, &h, err, sizeof(err)), -EINVAL);
        cr_assert(strstr(err, "'noslash' is invalid"), "%s", err);
        cr_assert_eq(ds_attach("/a/b", 0, &h, err, sizeof(err)), -EINVAL);
}

/* One corruption of the header: apply, attach, expect rc and a message. */
struct corruption {
        const char *what;
        void (*apply)(struct ds_header *);
        int rc;
        const char *needle;
};

static void c_magic(struct ds_header *h)
{
        h->magic ^= 1;
}
static void c_version(struct ds_header *h)
{
        h->layout_version = 99;
}
static void c_header_size(struct ds_header *h)
{
        h->header_size += 8;
}
static void c_record_size(struct ds_header *h)
{
        h->lease_size = 7;
}
static void c_mutex_size(struct ds_header *h)
{
        h->mutex_size = 24;
}
static void c_mutex_align(struct ds_header *h)
{
        h->mutex_align = 4;
}
static void c_word(struct ds_header *h)
{
        h->word_size = 4;
}
static void c_cap(struct ds_header *h)
{
        h->cap.max_procs = 0;
}
static void c_cap_big(struct ds_header *h)
{
        h->cap.max_leases += 1;
}
static void c_total(struct ds_header *h)
{
        h->total_size += 4096;
}
static void c_lock_kind(struct ds_header *h)
{
        h->lock.__data.__kind = 12345;
}
static void c_cfg(struct ds_header *h)
{
        h->cfg.soft_limit = h->cfg.max_limit + 1;
}
static void c_cfg_zero(struct ds_header *h)
{
        h->cfg.pool_size = 0;
}
static void c_hwm(struct ds_header *h)
{
        h->lease_hwm = h->cap.max_leases + 1;
}
static void c_proc_hwm(struct ds_header *h)
{
        h->proc_hwm = 0xffffffffu;
}
static void c_pidns(struct ds_header *h)
{
        h->pidns_ino ^= 0x5555;
}

Test(segment, each_corrupt_header_field_is_detected_precisely)
{
        const struct corruption cs[] = {
            {"magic", c_magic, -EPROTO, "bad magic"},
            {"version", c_version, -EPROTO, "layout version 99"},
            {"header size", c_header_size, -EPROTO, "header of"},
            {"record size", c_record_size, -EPROTO, "records of"},
            {"mutex size", c_mutex_size, -EPROTO, "lock type of size 24"},
            {"mutex align", c_mutex_align, -EPROTO, "alignment 4"},
            {"word size", c_word, -EPROTO, "word size 4"},
            {"capacity", c_cap, -EPROTO, "max_processes 0 is out of range"},
            {"capacity vs size", c_cap_big, -EPROTO, "capacity needs"},
            {"total size", c_total, -EPROTO, "capacity needs"},
            {"lock kind", c_lock_kind, -EPROTO, "corrupt lock"},
            {"config", c_cfg, -EPROTO, "invalid configuration: soft_limit"},
            {"config zero", c_cfg_zero, -EPROTO, "pool_size must be at least 1"},
            {"lease bound", c_hwm, -EPROTO, "table bounds out of range"},
            {"proc bound", c_proc_hwm, -EPROTO, "table bounds out of range"},
            {"pid namespace", c_pidns, -EXDEV, "another PID namespace"},
        };
        for (size_t i = 0; i < sizeof(cs) / sizeof(cs[0]); i++) {
                tu_create(seg, 20, 10, 15);
                size_t size;
                struct ds_header *h = map_raw(&size);
                cs[i].apply(h);
                munmap(h, size);
                char err[512] = "";
                cr_assert_eq(attach_rc(err, sizeof(err)), cs[i].rc, "%s: rc, message '%s'",
                             cs[i].what, err);
                cr_assert(strstr(err, cs[i].needle), "%s: message '%s' lacks '%s'", cs[i].what, err,
                          cs[i].needle);
                cr_assert(strstr(err, seg), "%s: message '%s' does not name the segment",
                          cs[i].what, err);
        }
}

Test(segment, truncated_segment_is_detected)
{
        tu_create(seg, 20, 10, 15);
        char path[128];
        snprintf(path, sizeof(path), "/dev/shm%s", seg);
        cr_assert_eq(truncate(path, 100), 0);
        char err[256] = "";
        cr_assert_eq(attach_rc(err, sizeof(err)), -EPROTO);
        cr_assert(strstr(err, "too small"), "%s", err);
        cr_assert_eq(truncate(path, 1 << 20), 0);
        cr_assert_eq(attach_rc(err, sizeof(err)), -EPROTO);
}

Test(segment, out_of_range_indices_are_reported_and_harmless)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        size_t size;
        void *m = map_raw(&size);
        struct ds_header *H = m;
        struct ds_lease *leases = (struct ds_lease *)((char *)m + ds_layout_leases_off(&H->cap));
        struct ds_proc *procs = (struct ds_proc *)((char *)m + ds_layout_procs_off());
        char why[256];

        uint32_t saved = leases[l.idx].proc;
        leases[l.idx].proc = 0x7fffffff;
        cr_assert_eq(ds_check(h, why, sizeof(why)), -EPROTO);
        cr_assert(strstr(why, "process record 2147483647"), "%s", why);
        struct ds_lease_ref x;
        cr_assert_eq(ds_acquire(h, 0, &x, NULL, 0), 0, "the pool keeps working");
        cr_assert_eq(ds_release(h, &x), 0);
        leases[l.idx].proc = saved;

        leases[l.idx].scraper = 99999;
        cr_assert_eq(ds_check(h, why, sizeof(why)), -EPROTO);
        cr_assert(strstr(why, "names scraper 99999"), "%s", why);
        leases[l.idx].scraper = procs[saved].scraper;

        atomic_store(&leases[l.idx].state, 77);
        cr_assert_eq(ds_check(h, why, sizeof(why)), -EPROTO);
        cr_assert(strstr(why, "invalid state 77"), "%s", why);
        atomic_store(&leases[l.idx].state, DS_LEASE_HELD);

        uint32_t ps = procs[saved].scraper;
        procs[saved].scraper = 5000;
        cr_assert_eq(ds_check(h, why, sizeof(why)), -EPROTO);
        cr_assert(strstr(why, "names scraper 5000"), "%s", why);
        struct ds_stats st;
        cr_assert_eq(ds_stats_get(h, &st), 0);
        ds_stats_free(&st);
        procs[saved].scraper = ps;

        H->held += 3;
        cr_assert_eq(ds_check(h, why, sizeof(why)), -EPROTO);
        cr_assert(strstr(why, "pool counters say 4 held"), "%s", why);
        H->held -= 3;
        tu_assert_consistent(h);
        munmap(m, size);
        ds_detach(h);
}

/* Exercises every operation on a segment that may be garbage. */
static void poke(void)
{
        ds_handle *h = NULL;
        char err[512];
        if (ds_attach(seg, 0, &h, err, sizeof(err)) != 0)
                return;
        struct ds_stats st;
        if (ds_stats_get(h, &st) == 0)
                ds_stats_free(&st);
        ds_check(h, err, sizeof(err));
        ds_reclaim(h);
        ds_set_scraper(h, "fuzz");
        struct ds_lease_ref l;
        if (ds_acquire(h, 0, &l, err, sizeof(err)) == 0)
                ds_release(h, &l);
        ds_touch(h, 0);
        ds_detach(h);
}

Test(segment, random_bytes_never_crash_an_attacher)
{
        struct ds_capacity cap;
        ds_capacity_defaults(&cap);
        /* the seed is printed before the first random byte, so a crash can
         * be replayed with DYNSHIM_TEST_SEED */
        const char *given = getenv("DYNSHIM_TEST_SEED");
        unsigned seed = given && *given ? (unsigned)strtoul(given, NULL, 10)
                                        : (unsigned)time(NULL) ^ (unsigned)getpid();
        fprintf(stderr,
                "random_bytes_never_crash_an_attacher: seed %u (DYNSHIM_TEST_SEED=%u "
                "replays it)\n",
                seed, seed);
        fflush(stderr);
        srand(seed);
        size_t lock_lo = offsetof(struct ds_header, lock);
        size_t lock_hi = lock_lo + sizeof(pthread_mutex_t);
        for (int iter = 0; iter < 400; iter++) {
                tu_create(seg, 20, 10, 15);
                if (iter % 3 == 0) {
                        /* a live holder and a waiter-less pool state to corrupt */
                        ds_handle *h = tu_attach(seg, "alpha");
                        struct ds_lease_ref l;
                        ds_acquire(h, 0, &l, NULL, 0);
                        ds_detach(h);
                }
                size_t size;
                unsigned char *m = map_raw(&size);
                int mode = iter % 4;
                size_t n = mode == 0 ? size : (size_t)(1 + rand() % 64);
                for (size_t k = 0; k < n; k++) {
                        size_t off;
                        if (mode == 0)
                                off = k; /* everything */
                        else if (mode == 1)
                                off = (size_t)rand() % sizeof(struct ds_header); /* header */
                        else
                                off = (size_t)rand() % size; /* anywhere */
                        /* the lock word of a "live" owner is covered by its own test */
                        if (off >= lock_lo && off < lock_hi)
                                continue;
                        m[off] = (unsigned char)rand();
                }
                munmap(m, size);
                poke();
                poke();
        }
}

Test(segment, lock_held_by_a_thread_that_never_existed_times_out)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_header *H = ds_handle_header(h);
        H->lock.__data.__lock = 0x3ffffffe; /* a TID that does not exist */
        uint64_t t0 = ds_now_ns();
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), -EDEADLK);
        cr_assert_lt(ds_now_ns() - t0, 20000000000ull);
        H->lock.__data.__lock = 0;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        ds_detach(h);
}

Test(segment, segment_owned_by_another_user_is_refused)
{
        tu_create(seg, 20, 10, 15);
        char path[128];
        snprintf(path, sizeof(path), "/dev/shm%s", seg);
        if (geteuid() != 0)
                cr_skip_test("needs root to give the segment to another user");
        cr_assert_eq(chown(path, 65534, 65534), 0);
        char err[256] = "";
        cr_assert_eq(attach_rc(err, sizeof(err)), -EACCES);
        cr_assert(strstr(err, "owned by uid 65534"), "%s", err);
}

Test(segment, process_in_another_pid_namespace_is_refused)
{
        tu_create(seg, 20, 10, 15);
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t c = fork();
        if (c == 0) {
                int rc = 1000;
                if (unshare(CLONE_NEWPID) != 0) {
                        rc = 2000; /* not permitted here */
                } else {
                        pid_t g = fork();
                        if (g == 0) {
                                ds_handle *h = NULL;
                                char err[512] = "";
                                int r = ds_attach(seg, 0, &h, err, sizeof(err));
                                int ok =
                                    r == -EXDEV && strstr(err, "another PID namespace") != NULL;
                                _exit(ok ? 0 : 1);
                        }
                        int st;
                        waitpid(g, &st, 0);
                        rc = WIFEXITED(st) ? WEXITSTATUS(st) : 3;
                }
                if (write(p[1], &rc, sizeof(rc)) < 0)
                        _exit(1);
                _exit(0);
        }
        int rc = -1;
        cr_assert_eq(read(p[0], &rc, sizeof(rc)), (ssize_t)sizeof(rc));
        waitpid(c, NULL, 0);
        if (rc == 2000)
                cr_skip_test("unshare(CLONE_NEWPID) is not permitted here");
        cr_assert_eq(rc, 0, "attach from a new PID namespace was not refused (%d)", rc);
}

Test(segment, validator_refuses_a_buffer_smaller_than_a_header)
{
        static struct ds_header hdr; /* zeroes: only the size is looked at */
        char err[256] = "";
        cr_assert_eq(ds_segment_validate(&hdr, sizeof(hdr) - 1, "/tiny", err, sizeof(err)),
                     -EPROTO);
        cr_assert(strstr(err, "/tiny") && strstr(err, "too small for a header"), "%s", err);
}

/* A free process record whose life lock is held (by a leaving process's life
 * thread, or a thread id a corrupt segment names) used to be taken anyway:
 * the new life thread then waited for that lock forever, with the segment's
 * lock held, wedging the whole pool. It must be skipped. */
Test(segment, free_process_record_with_a_held_life_lock_is_skipped_not_waited_on)
{
        tu_create(seg, 20, 10, 15);
        size_t size;
        unsigned char *m = map_raw(&size);
        struct ds_proc *procs = (struct ds_proc *)(m + ds_layout_procs_off());
        cr_assert_eq(procs[0].pid, 0);
        procs[0].life.__data.__lock = 0x3ffffffe; /* held by a TID that does not exist */
        pid_t c = fork();
        cr_assert_neq(c, -1);
        if (c == 0) {
                alarm(10); /* the old behaviour: a hang */
                ds_handle *h = NULL;
                struct ds_lease_ref l;
                if (ds_attach(seg, 0, &h, NULL, 0) || ds_set_scraper(h, "alpha"))
                        _exit(2);
                if (ds_acquire(h, 0, &l, NULL, 0) != 0)
                        _exit(3);
                if (procs[0].pid != 0 || procs[1].pid != getpid())
                        _exit(4); /* registered in the record with the held lock */
                if (ds_release(h, &l) != 0)
                        _exit(5);
                ds_detach(h);
                _exit(0);
        }
        int st;
        cr_assert_eq(waitpid(c, &st, 0), c);
        cr_assert(WIFEXITED(st), "the client hung registering (signal %d)",
                  WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        cr_assert_eq(WEXITSTATUS(st), 0, "client failed at step %d", WEXITSTATUS(st));
        ds_handle *h = tu_attach(seg, NULL);
        tu_assert_consistent(h);
        cr_assert_eq(tu_held(h), 0);
        ds_detach(h);
        munmap(m, size);
}

/* Lease id 0 means "no lease": a corrupt next_lease_id of 0 used to hand it
 * out, and the slot so granted could never be given back (-EINVAL). */
Test(segment, lease_id_counter_at_zero_never_hands_out_id_zero)
{
        tu_create(seg, 20, 10, 15);
        ds_handle *h = tu_attach(seg, "alpha");
        struct ds_header *H = ds_handle_header(h);
        cr_assert_eq(ds_lock(h), 0);
        H->next_lease_id = 0;
        ds_unlock(h);
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        cr_assert_neq(l.id, 0);
        cr_assert_eq(ds_release(h, &l), 0);
        cr_assert_eq(tu_held(h), 0);
        tu_assert_consistent(h);
        ds_detach(h);
}
