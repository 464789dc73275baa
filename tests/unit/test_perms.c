/* test_perms.c - who may use a segment, tested with two real users
 * (dynshim-u1, dynshim-u2, created if missing, both in group dynshim-g), and
 * what a segment's bytes may contain: no secrets.
 *
 * Each user's part runs in a forked child that drops to that user (setgid,
 * setgroups, setuid) and reports through shared memory. Needs root; skipped
 * otherwise. */
#include "testutil.h"

#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>

#define U1    "dynshim-u1"
#define U2    "dynshim-u2"
#define GROUP "dynshim-g"

static char seg[96];

/* What a child reports: its steps' result and the last error text. */
struct report {
        int rc;        /* 0: every step as expected; else the failing step */
        int attach_rc; /* what ds_attach returned */
        uint32_t held;
        uint64_t connects;
        char err[512];
};

static struct report *rep;

static void setup(void)
{
        snprintf(seg, sizeof(seg), "/dynshim-ut-perms-%d", (int)getpid());
        rep = mmap(NULL, sizeof(*rep), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        cr_assert_neq(rep, MAP_FAILED);
}

static void teardown(void)
{
        ds_segment_destroy(seg, NULL, 0);
        munmap(rep, sizeof(*rep));
}

TestSuite(perms, .init = setup, .fini = teardown, .timeout = 60);

static int sh(const char *cmd)
{
        int st = system(cmd);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Creates the group and the two users unless they exist, and skips the test
 * when that is not possible (not root, no useradd). */
static void need_users(void)
{
        if (geteuid() != 0)
                cr_skip_test("needs root to create users and switch to them");
        if (sh("getent group " GROUP " >/dev/null || groupadd " GROUP " 2>/dev/null") != 0)
                cr_skip_test("cannot create group " GROUP);
        const char *users[] = {U1, U2};
        for (int i = 0; i < 2; i++) {
                char cmd[256];
                snprintf(cmd, sizeof(cmd),
                         "id %s >/dev/null 2>&1 || useradd -M -N -s /usr/sbin/nologin %s "
                         "2>/dev/null; usermod -a -G %s %s 2>/dev/null",
                         users[i], users[i], GROUP, users[i]);
                if (sh(cmd) != 0)
                        cr_skip_test("cannot create user %s", users[i]);
        }
}

static uid_t uid_of(const char *user)
{
        struct passwd *pw = getpwnam(user);
        cr_assert_not_null(pw, "no user %s", user);
        return pw->pw_uid;
}

static gid_t group_gid(void)
{
        struct group *g = getgrnam(GROUP);
        cr_assert_not_null(g, "no group " GROUP);
        return g->gr_gid;
}

enum groups { WITH_GROUPS, WITHOUT_GROUPS };

/* Runs fn as user in a child: with the user's groups (initgroups), or with
 * no supplementary group at all. Returns the report. */
static struct report run_as(const char *user, enum groups groups, void (*fn)(struct report *))
{
        struct passwd *pw = getpwnam(user);
        cr_assert_not_null(pw, "no user %s", user);
        uid_t uid = pw->pw_uid;
        gid_t gid = pw->pw_gid;
        memset(rep, 0, sizeof(*rep));
        rep->rc = 100; /* the child never reported */
        pid_t c = fork();
        cr_assert_neq(c, -1);
        if (c == 0) {
                alarm(30);
                int ok =
                    groups == WITH_GROUPS ? initgroups(user, gid) == 0 : setgroups(0, NULL) == 0;
                if (!ok || setgid(gid) != 0 || setuid(uid) != 0 || geteuid() != uid) {
                        rep->rc = 101;
                        _exit(0);
                }
                rep->rc = 0;
                fn(rep);
                _exit(0);
        }
        int st;
        cr_assert_eq(waitpid(c, &st, 0), c);
        cr_assert(WIFEXITED(st), "the child running as %s died of signal %d", user,
                  WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        return *rep;
}

/* ---- what the children do ---- */

static mode_t create_mode;
static gid_t create_group = (gid_t)-1;

static void do_create(struct report *r)
{
        struct ds_config cfg;
        struct ds_capacity cap;
        ds_config_defaults(&cfg);
        ds_capacity_defaults(&cap);
        struct ds_create_opts o = {.mode = create_mode, .group = create_group, .force = 0};
        if (ds_segment_create(seg, &cfg, &cap, &o, r->err, sizeof(r->err)) != 0)
                r->rc = 1;
}

static void do_attach(struct report *r, unsigned flags)
{
        ds_handle *h = NULL;
        r->attach_rc = ds_attach(seg, flags, &h, r->err, sizeof(r->err));
        if (r->attach_rc == 0)
                ds_detach(h);
}

static void do_attach_only(struct report *r)
{
        do_attach(r, 0);
}

static void do_attach_or_create(struct report *r)
{
        do_attach(r, DS_ATTACH_CREATE);
}

/* Attaches, takes a slot, reads the stats while holding it, gives it back
 * and reads this user's scraper's connects. */
static void do_use(struct report *r)
{
        ds_handle *h = NULL;
        r->attach_rc = ds_attach(seg, 0, &h, r->err, sizeof(r->err));
        if (r->attach_rc != 0) {
                r->rc = 1;
                return;
        }
        struct ds_lease_ref l;
        char user[32];
        snprintf(user, sizeof(user), "user-%u", (unsigned)getuid());
        if (ds_set_scraper(h, user) != 0 || ds_acquire(h, 1000, &l, r->err, sizeof(r->err)) != 0) {
                r->rc = 2;
                goto out;
        }
        struct ds_stats st;
        if (ds_stats_get(h, &st) != 0) {
                r->rc = 3;
                goto out;
        }
        r->held = st.held;
        ds_stats_free(&st);
        if (ds_release(h, &l) != 0) {
                r->rc = 4;
                goto out;
        }
        if (ds_stats_get(h, &st) != 0) {
                r->rc = 5;
                goto out;
        }
        for (size_t i = 0; i < st.n_scrapers; i++)
                if (strcmp(st.scrapers[i].name, user) == 0)
                        r->connects = st.scrapers[i].connects;
        ds_stats_free(&st);
out:
        ds_detach(h);
}

/* Reads the stats and reports the connects of scraper "user-<u2's uid>". */
static uid_t other_uid;
static void do_read_other_users_stats(struct report *r)
{
        ds_handle *h = NULL;
        r->attach_rc = ds_attach(seg, 0, &h, r->err, sizeof(r->err));
        if (r->attach_rc != 0) {
                r->rc = 1;
                return;
        }
        struct ds_stats st;
        char other[32];
        snprintf(other, sizeof(other), "user-%u", (unsigned)other_uid);
        if (ds_stats_get(h, &st) == 0) {
                for (size_t i = 0; i < st.n_scrapers; i++)
                        if (strcmp(st.scrapers[i].name, other) == 0)
                                r->connects = st.scrapers[i].connects;
                ds_stats_free(&st);
        } else {
                r->rc = 2;
        }
        ds_detach(h);
}

static void assert_mode(mode_t want, uid_t owner, gid_t group)
{
        char path[128];
        snprintf(path, sizeof(path), "/dev/shm%s", seg);
        struct stat st;
        cr_assert_eq(stat(path, &st), 0, "stat %s", path);
        cr_assert_eq(st.st_mode & 0777, want, "mode %o, expected %o", st.st_mode & 0777, want);
        cr_assert_eq(st.st_uid, owner, "owner %u, expected %u", st.st_uid, owner);
        if (group != (gid_t)-1)
                cr_assert_eq(st.st_gid, group, "group %u, expected %u", st.st_gid, group);
}

/* ---- the tests ---- */

Test(perms, segment_created_by_one_user_is_0600_and_refused_to_another)
{
        need_users();
        create_mode = 0, create_group = (gid_t)-1;
        struct report r = run_as(U1, WITH_GROUPS, do_create);
        cr_assert_eq(r.rc, 0, "create as " U1 ": %s", r.err);
        assert_mode(0600, uid_of(U1), (gid_t)-1);
        r = run_as(U2, WITH_GROUPS, do_attach_only);
        cr_assert_eq(r.attach_rc, -EACCES, "attach as " U2 " gave %d: %s", r.attach_rc, r.err);
        char want[128];
        snprintf(want, sizeof(want), "is not accessible to uid %u", (unsigned)uid_of(U2));
        cr_assert(strstr(r.err, seg) && strstr(r.err, want), "unclear message: %s", r.err);
}

Test(perms, segment_shared_0660_with_a_group_is_usable_by_a_member)
{
        need_users();
        create_mode = 0660, create_group = group_gid();
        struct report r = run_as(U1, WITH_GROUPS, do_create);
        cr_assert_eq(r.rc, 0, "create as " U1 ": %s", r.err);
        assert_mode(0660, uid_of(U1), group_gid());
        r = run_as(U2, WITH_GROUPS, do_use);
        cr_assert_eq(r.rc, 0, "use as " U2 " failed at step %d (attach %d): %s", r.rc, r.attach_rc,
                     r.err);
        cr_assert_eq(r.held, 1, "the stats did not show the slot held");
        cr_assert_eq(r.connects, 1);
        /* the owner sees the member's use */
        other_uid = uid_of(U2);
        r = run_as(U1, WITH_GROUPS, do_read_other_users_stats);
        cr_assert_eq(r.rc, 0, "stats as " U1 ": %s", r.err);
        cr_assert_eq(r.connects, 1, U1 " does not see " U2 "'s connect");
}

Test(perms, group_shared_segment_is_refused_to_a_user_outside_the_group)
{
        need_users();
        create_mode = 0660, create_group = group_gid();
        struct report r = run_as(U1, WITH_GROUPS, do_create);
        cr_assert_eq(r.rc, 0, "create as " U1 ": %s", r.err);
        r = run_as(U2, WITHOUT_GROUPS, do_attach_only);
        cr_assert_eq(r.attach_rc, -EACCES, "attach gave %d: %s", r.attach_rc, r.err);
        cr_assert(strstr(r.err, "is not accessible to uid"), "unclear message: %s", r.err);
}

/* Another user pre-creates the segment open to everyone (0666), as one who
 * wants to capture or block the others' clients would: it is refused, also
 * by an attach that would create a missing segment (the shim's), which must
 * not take it over either. */
Test(perms, segment_precreated_by_another_user_is_refused_with_a_clear_message)
{
        need_users();
        create_mode = 0666, create_group = (gid_t)-1;
        struct report r = run_as(U2, WITH_GROUPS, do_create);
        cr_assert_eq(r.rc, 0, "create as " U2 ": %s", r.err);
        assert_mode(0666, uid_of(U2), (gid_t)-1);
        char want[160];
        snprintf(want, sizeof(want),
                 "segment %s is owned by uid %u, not by this user (uid %u) or root", seg,
                 (unsigned)uid_of(U2), (unsigned)uid_of(U1));
        r = run_as(U1, WITH_GROUPS, do_attach_only);
        cr_assert_eq(r.attach_rc, -EACCES, "attach gave %d: %s", r.attach_rc, r.err);
        cr_assert(strstr(r.err, want), "unclear message: %s", r.err);
        r = run_as(U1, WITH_GROUPS, do_attach_or_create);
        cr_assert_eq(r.attach_rc, -EACCES, "attach-or-create gave %d: %s", r.attach_rc, r.err);
        cr_assert(strstr(r.err, want), "unclear message: %s", r.err);
        assert_mode(0666, uid_of(U2), (gid_t)-1); /* still U2's, untouched */
}

/* Root-owned segments are trusted: an administrator may create one pool for
 * every user (dyncoord --init --mode 0666 as root). */
Test(perms, root_created_segment_with_mode_0666_is_usable_by_ordinary_users)
{
        need_users();
        struct ds_config cfg;
        struct ds_capacity cap;
        ds_config_defaults(&cfg);
        ds_capacity_defaults(&cap);
        struct ds_create_opts o = {.mode = 0666, .group = (gid_t)-1, .force = 1};
        char err[256] = "";
        cr_assert_eq(ds_segment_create(seg, &cfg, &cap, &o, err, sizeof(err)), 0, "%s", err);
        assert_mode(0666, 0, (gid_t)-1);
        struct report r = run_as(U1, WITH_GROUPS, do_use);
        cr_assert_eq(r.rc, 0, "use as " U1 " failed at step %d: %s", r.rc, r.err);
        cr_assert_eq(r.connects, 1);
        r = run_as(U2, WITHOUT_GROUPS, do_use);
        cr_assert_eq(r.rc, 0, "use as " U2 " failed at step %d: %s", r.rc, r.err);
        cr_assert_eq(r.connects, 1);
        ds_handle *h = tu_attach(seg, NULL);
        tu_assert_consistent(h);
        cr_assert_eq(tu_held(h), 0);
        ds_detach(h);
}

/* A root-created segment that is not open to the user (the default 0600,
 * or group/others without write) is refused with a sentence, like any
 * segment the kernel does not let the user write; an attach that would
 * create a missing segment does not take it over. */
Test(perms, root_created_segment_not_writable_by_a_user_is_refused_and_left_alone)
{
        need_users();
        static const mode_t modes[] = {0600, 0640, 0644};
        for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
                struct ds_config cfg;
                struct ds_capacity cap;
                ds_config_defaults(&cfg);
                ds_capacity_defaults(&cap);
                struct ds_create_opts o = {.mode = modes[i], .group = (gid_t)-1, .force = 1};
                char err[256] = "";
                cr_assert_eq(ds_segment_create(seg, &cfg, &cap, &o, err, sizeof(err)), 0, "%s",
                             err);
                struct report r = run_as(U1, WITH_GROUPS, do_attach_or_create);
                cr_assert_eq(r.rc, 0, "the child as " U1 " could not start");
                cr_assert_eq(r.attach_rc, -EACCES, "mode %o: attach returned %d (%s)", modes[i],
                             r.attach_rc, r.err);
                char want[160];
                snprintf(want, sizeof(want), "segment %s is not accessible to uid %u", seg,
                         (unsigned)uid_of(U1));
                cr_assert(strstr(r.err, want), "mode %o: unclear message: %s", modes[i], r.err);
                assert_mode(modes[i], 0, (gid_t)-1); /* still root's, untouched */
                ds_handle *h = tu_attach(seg, NULL);
                tu_assert_consistent(h);
                ds_detach(h);
        }
}

/* A root-created segment shared with a group (dyncoord --init --mode 0660
 * --group G as root) serves the group's members and nobody else. */
Test(perms, root_created_segment_shared_with_a_group_serves_its_members_only)
{
        need_users();
        struct ds_config cfg;
        struct ds_capacity cap;
        ds_config_defaults(&cfg);
        ds_capacity_defaults(&cap);
        struct ds_create_opts o = {.mode = 0660, .group = group_gid(), .force = 1};
        char err[256] = "";
        cr_assert_eq(ds_segment_create(seg, &cfg, &cap, &o, err, sizeof(err)), 0, "%s", err);
        assert_mode(0660, 0, group_gid());
        struct report r = run_as(U1, WITH_GROUPS, do_use);
        cr_assert_eq(r.rc, 0, "use as " U1 " (in " GROUP ") failed at step %d: %s", r.rc, r.err);
        cr_assert_eq(r.connects, 1);
        r = run_as(U2, WITHOUT_GROUPS, do_attach_only);
        cr_assert_eq(r.attach_rc, -EACCES, "a user outside " GROUP " attached: %d (%s)",
                     r.attach_rc, r.err);
}

/* Takes a slot and exits without giving it back (run_as's _exit). */
static void do_hold_and_die(struct report *r)
{
        ds_handle *h = NULL;
        r->attach_rc = ds_attach(seg, 0, &h, r->err, sizeof(r->err));
        struct ds_lease_ref l;
        if (r->attach_rc != 0 || ds_set_scraper(h, "holder") != 0 ||
            ds_acquire(h, 1000, &l, r->err, sizeof(r->err)) != 0)
                r->rc = 1;
}

/* In a root-created 0666 pool, a slot of one user's dead process returns
 * to the pool for another user: liveness (robust locks) works across
 * users. */
Test(perms, dead_users_slot_in_a_root_created_segment_returns_to_another_user)
{
        need_users();
        struct ds_config cfg;
        struct ds_capacity cap;
        ds_config_defaults(&cfg);
        ds_capacity_defaults(&cap);
        cfg.pool_size = cfg.soft_limit = cfg.max_limit = 1;
        cfg.limits_set = DS_LIMIT_SET_ALL;
        struct ds_create_opts o = {.mode = 0666, .group = (gid_t)-1, .force = 1};
        char err[256] = "";
        cr_assert_eq(ds_segment_create(seg, &cfg, &cap, &o, err, sizeof(err)), 0, "%s", err);
        struct report r = run_as(U1, WITH_GROUPS, do_hold_and_die);
        cr_assert_eq(r.rc, 0, "the holder as " U1 " failed: %s", r.err);
        r = run_as(U2, WITHOUT_GROUPS, do_use); /* waits up to 1 s for the only slot */
        cr_assert_eq(r.rc, 0, U2 " did not get the dead holder's slot (step %d): %s", r.rc, r.err);
        cr_assert_eq(r.held, 1);
        ds_handle *h = tu_attach(seg, NULL);
        tu_assert_consistent(h);
        cr_assert_eq(tu_held(h), 0);
        ds_detach(h);
}

/* ---- no secrets ---- */

TestSuite(secrets, .init = setup, .fini = teardown, .timeout = 60);

/* A workload under two scrapers, with a holder killed and reclaimed, while a
 * conninfo with a password sits in the environment: the coordinator is never
 * given it, and the segment must hold none of it. The shim's connections
 * bring the same check with real conninfo strings. */
Test(secrets, segment_holds_no_conninfo_and_no_text_but_scraper_names)
{
        char marker[64], conninfo[160];
        snprintf(marker, sizeof(marker), "s3cr3t-%d-dynshim", (int)getpid());
        snprintf(conninfo, sizeof(conninfo), "host=db.example user=app password=%s", marker);
        setenv("PGPASSWORD", marker, 1);
        setenv("DATABASE_URL", conninfo, 1);
        tu_create(seg, 4, 2, 3);
        ds_handle *a = tu_attach(seg, "layer1_5_production_scraper");
        struct ds_lease_ref l1, l2;
        cr_assert_eq(ds_acquire(a, 0, &l1, NULL, 0), 0);
        pid_t c = fork();
        if (c == 0) {
                ds_handle *b = NULL;
                struct ds_lease_ref l;
                if (ds_attach(seg, 0, &b, NULL, 0) || ds_set_scraper(b, "beta") ||
                    ds_acquire(b, 1000, &l, NULL, 0))
                        _exit(1);
                pause();
        }
        for (int t = 0; t < 500 && tu_held(a) != 2; t++)
                tu_sleep_ms(10);
        cr_assert_eq(tu_held(a), 2);
        kill(c, SIGKILL);
        waitpid(c, NULL, 0);
        cr_assert_eq(ds_reclaim(a), 1);
        cr_assert_eq(ds_acquire(a, 0, &l2, NULL, 0), 0);
        cr_assert_eq(ds_release(a, &l2), 0);

        cr_assert_eq(tu_segment_find(seg, marker), -1, "the password is in the segment");
        cr_assert_eq(tu_segment_find(seg, "password="), -1, "conninfo is in the segment");
        cr_assert_eq(tu_segment_find(seg, "host="), -1, "conninfo is in the segment");
        char what[200];
        cr_assert_eq(tu_segment_foreign_strings(seg, 6, what, sizeof(what)), 0,
                     "text that is not a scraper name: %s", what);
        cr_assert_neq(tu_segment_find(seg, "layer1_5_production_scraper"), -1);
        cr_assert_neq(tu_segment_find(seg, "beta"), -1);
        cr_assert_eq(ds_release(a, &l1), 0);
        ds_detach(a);
        unsetenv("PGPASSWORD");
        unsetenv("DATABASE_URL");
}

/* The scan itself: it finds a marker planted in any table, and reports text
 * outside a scraper's name. */
Test(secrets, scan_finds_a_planted_marker_anywhere_and_nothing_otherwise)
{
        tu_create(seg, 4, 2, 3);
        ds_handle *h = tu_attach(seg, "alphabetic");
        struct ds_lease_ref l;
        cr_assert_eq(ds_acquire(h, 0, &l, NULL, 0), 0);
        const char *marker = "password=planted-marker";
        cr_assert_eq(tu_segment_find(seg, marker), -1);
        char what[200];
        cr_assert_eq(tu_segment_foreign_strings(seg, 6, what, sizeof(what)), 0, "%s", what);

        struct ds_header *H = ds_handle_header(h);
        struct ds_capacity cap = H->cap;
        unsigned char *base = (unsigned char *)H;
        size_t spots[] = {
            ds_layout_leases_off(&cap) + 3 * sizeof(struct ds_lease),           /* lease table */
            ds_layout_procs_off() + 2 * sizeof(struct ds_proc) + 40,            /* process table */
            ds_layout_scrapers_off(&cap) + 5 * sizeof(struct ds_scraper) + 100, /* counters */
            ds_layout_size(&cap) - strlen(marker),                              /* the last byte */
        };
        for (size_t i = 0; i < sizeof(spots) / sizeof(spots[0]); i++) {
                unsigned char saved[64];
                memcpy(saved, base + spots[i], strlen(marker));
                memcpy(base + spots[i], marker, strlen(marker));
                cr_assert_eq(tu_segment_find(seg, marker), (long)spots[i]);
                cr_assert_eq(tu_segment_foreign_strings(seg, 6, what, sizeof(what)), 1,
                             "planted at %zu: %s", spots[i], what);
                cr_assert(strstr(what, marker), "%s", what);
                memcpy(base + spots[i], saved, strlen(marker));
                cr_assert_eq(tu_segment_find(seg, marker), -1);
        }
        /* a scraper name is the one place text belongs (runs shorter than 6
         * bytes occur in binary counters and timestamps by chance) */
        cr_assert_eq(tu_segment_foreign_strings(seg, 6, what, sizeof(what)), 0, "%s", what);
        cr_assert_neq(tu_segment_find(seg, "alphabetic"), -1);
        cr_assert_eq(ds_release(h, &l), 0);
        ds_detach(h);
}
