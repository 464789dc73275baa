/* test_ops.c - dyncoord's operations driven as a black box: --run
 * (supervision, one instance per name, restarts, signals, the shim check),
 * --watchdog (reclaim, usage, zombies, server), --health --conninfo and
 * --stats --prometheus/--watch. Supervision preloads a stand-in library
 * (DYNSHIM_LIBRARY) so it is tested whether or not the real shim is built;
 * the test of the default library search needs the real one. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dynshim/coord.h"
#include "dynshim/segment.h"
#include "cliutil.h"

#define PGBIN "/usr/lib/postgresql/15/bin"

static char segment[64];
static char tmpdir[128];

static void setup(void)
{
        snprintf(segment, sizeof(segment), "/dynshim-ops-%d", (int)getpid());
        setenv("DYNSHIM_SEGMENT", segment, 1);
        ds_segment_destroy(segment, NULL, 0);
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/dynshim-ops-XXXXXX");
        cr_assert_not_null(mkdtemp(tmpdir));
        chmod(tmpdir, 0755); /* the test server runs as nobody */
        char run[256];
        snprintf(run, sizeof(run), "%s/run", tmpdir);
        cr_assert_eq(mkdir(run, 0700), 0);
        setenv("DYNSHIM_RUN_DIR", run, 1);
        setenv("DYNSHIM_LIBRARY", STUB_SHIM, 1);
        unsetenv("LD_PRELOAD");
}

static void teardown(void)
{
        ds_segment_destroy(segment, NULL, 0);
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        (void)!system(cmd);
}

TestSuite(ops, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers ---- */

/* tmpdir/name, created as a directory when dir is set. */
static const char *tpath(const char *name, int dir)
{
        static char bufs[8][512];
        static int next;
        char *p = bufs[next++ % 8];
        snprintf(p, 512, "%s/%s", tmpdir, name);
        if (dir) {
                cr_assert_eq(mkdir(p, 0755), 0, "mkdir %s: %s", p, strerror(errno));
                chmod(p, 0777);
        }
        return p;
}

static int read_text(const char *path, char *buf, size_t len)
{
        FILE *f = fopen(path, "r");
        if (!f)
                return 0;
        size_t n = fread(buf, 1, len - 1, f);
        buf[n] = '\0';
        fclose(f);
        return 1;
}

static pid_t read_pid(const char *dir, const char *name)
{
        char path[600], buf[64];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        cr_assert(read_text(path, buf, sizeof(buf)), "%s was not written", path);
        return (pid_t)atoi(buf);
}

/* Waits until file exists (and, if needle, contains it); fails after ms. */
static void wait_for_text(const char *path, const char *needle, unsigned ms)
{
        static char buf[1 << 16];
        for (unsigned t = 0; t <= ms / 10; t++) {
                if (read_text(path, buf, sizeof(buf)) && (!needle || strstr(buf, needle)))
                        return;
                sleep_ms(10);
        }
        cr_assert_fail("%s never %s%s%s within %u ms; it holds:\n%s", path,
                       needle ? "contained '" : "appeared", needle ? needle : "", needle ? "'" : "",
                       ms, buf);
}

static void assert_gone(pid_t pid, const char *what)
{
        cr_assert(pid > 0, "no pid for %s", what);
        cr_assert(kill(pid, 0) != 0 && errno == ESRCH, "%s (pid %d) is still there", what,
                  (int)pid);
}

/* Dead: gone, or a zombie waiting for a parent outside the test (a killed
 * supervisor's orphans go to init, which may be slow to reap). */
static void assert_dead(pid_t pid, const char *what)
{
        char path[64], buf[512] = "";
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        if (!read_text(path, buf, sizeof(buf)))
                return;
        const char *p = strrchr(buf, ')');
        cr_assert(p && p[1] == ' ' && p[2] == 'Z', "%s (pid %d) is still running: %s", what,
                  (int)pid, buf);
}

static uint64_t now_ms(void)
{
        return ds_now_ns() / 1000000u;
}

/* ---- --run: the process tree ---- */

Test(ops, run_reaps_orphans_kills_daemons_and_exits_with_the_childs_status)
{
        const char *dir = tpath("tree", 1);
        struct result r;
        uint64_t t0 = now_ms();
        DYNCOORD(r, "--run", "tree", "--grace", "0.3", "--", FAKE_SCRAPER, "tree", dir, "3");
        uint64_t took = now_ms() - t0;
        assert_exit(&r, 3);
        char state[32] = "";
        char path[600];
        snprintf(path, sizeof(path), "%s/orphan_state", dir);
        cr_assert(read_text(path, state, sizeof(state)));
        cr_assert_str_eq(state, "reaped", "the orphaned grandchild stayed a zombie");
        assert_gone(read_pid(dir, "orphan"), "the orphan");
        assert_gone(read_pid(dir, "daemon"), "the daemon in its own session");
        assert_gone(read_pid(dir, "stubborn"), "the daemon that ignores SIGTERM");
        cr_assert_null(strstr(r.err, "not loaded"), "%s", r.err);
        /* the stubborn daemon needed the KILL after the 0.3 s grace */
        cr_assert_geq(took, 300, "took %llu ms", (unsigned long long)took);
        cr_assert_lt(took, 5000, "took %llu ms", (unsigned long long)took);
}

Test(ops, run_exits_with_128_plus_the_signal_that_killed_the_child)
{
        struct result r;
        DYNCOORD(r, "--run", "k", "--", FAKE_SCRAPER, "selfkill", "9");
        assert_exit(&r, 137);
        DYNCOORD(r, "--run", "k", "--", FAKE_SCRAPER, "selfkill", "15");
        assert_exit(&r, 143);
        DYNCOORD(r, "--run", "k", "--", "/bin/sh", "-c", "exit 0");
        assert_exit(&r, 0);
}

Test(ops, run_sets_ld_preload_first_the_scraper_name_and_the_segment)
{
        const char *file = tpath("env.txt", 0);
        char stub[PATH_MAX], expected[PATH_MAX * 2], buf[8192];
        cr_assert_not_null(realpath(STUB_SHIM, stub));
        /* dyncoord inherits this LD_PRELOAD too: a sanitized build must not
         * insist on loading its runtime first */
        setenv("ASAN_OPTIONS", "verify_asan_link_order=0", 1);
        setenv("LD_PRELOAD", "/lib/x86_64-linux-gnu/libm.so.6", 1);
        struct result r;
        DYNCOORD(r, "--segment", segment, "--run", "envy", "--", FAKE_SCRAPER, "env", file);
        unsetenv("LD_PRELOAD");
        assert_exit(&r, 0);
        cr_assert(read_text(file, buf, sizeof(buf)));
        snprintf(expected, sizeof(expected),
                 "LD_PRELOAD=%s:/lib/x86_64-linux-gnu/libm.so.6\nDYNSHIM_SCRAPER=envy\n"
                 "DYNSHIM_SEGMENT=%s\nmapped=1\n",
                 stub, segment);
        cr_assert_str_eq(buf, expected);
        cr_assert_null(strstr(r.err, "not loaded"), "%s", r.err);
}

Test(ops, run_finds_the_built_shim_next_to_dyncoord_without_dynshim_library)
{
        if (!REAL_SHIM[0] || access(REAL_SHIM, R_OK) != 0) {
                teardown(); /* a skipped test does not reach .fini */
                cr_skip_test("libdynshim.so is not built in this tree (no shim target yet)");
        }
        if (REAL_SHIM_SANITIZED) {
                teardown();
                cr_skip_test("the sanitized shim needs its runtime preloaded first; the helper "
                             "program is not sanitized");
        }
        unsetenv("DYNSHIM_LIBRARY");
        const char *file = tpath("env.txt", 0);
        char lib[PATH_MAX], expected[PATH_MAX * 2], buf[8192];
        cr_assert_not_null(realpath(REAL_SHIM, lib));
        struct result r;
        DYNCOORD(r, "--run", "real", "--", FAKE_SCRAPER, "env", file);
        assert_exit(&r, 0);
        cr_assert(read_text(file, buf, sizeof(buf)));
        snprintf(expected, sizeof(expected), "LD_PRELOAD=%s\n", lib);
        cr_assert(strncmp(buf, expected, strlen(expected)) == 0, "%s", buf);
        assert_contains(buf, "mapped=1");
        cr_assert_null(strstr(r.err, "not loaded"), "%s", r.err);
}

Test(ops, run_warns_when_the_shim_is_not_loaded_in_a_static_program)
{
        struct result r;
        DYNCOORD(r, "--run", "static", "--", STATIC_PROGRAM);
        assert_exit(&r, 0);
        assert_contains(r.err, "libdynshim.so");
        assert_contains(r.err, "is not loaded in");
        assert_contains(r.err, "static or setuid");
}

Test(ops, run_with_a_missing_library_or_command_fails_naming_it)
{
        struct result r;
        setenv("DYNSHIM_LIBRARY", "/nonexistent/libdynshim.so", 1);
        DYNCOORD(r, "--run", "x", "--", "/bin/true");
        assert_exit(&r, 1);
        assert_contains(r.err, "DYNSHIM_LIBRARY names '/nonexistent/libdynshim.so'");
        setenv("DYNSHIM_LIBRARY", STUB_SHIM, 1);
        DYNCOORD(r, "--run", "x", "--", "/nonexistent/program");
        assert_exit(&r, 127);
        assert_contains(r.err, "could not run '/nonexistent/program'");
        DYNCOORD(r, "--run", "x", "--", "no-such-program-dynshim");
        assert_exit(&r, 127);
}

Test(ops, operation_usage_errors_exit_2_with_the_reason)
{
        static const struct {
                const char *args[10];
                const char *message;
        } cases[] = {
            {{"--run", "x"}, "--run needs a command after --"},
            {{"--run", "x", "prog"}, "unexpected argument 'prog' for --run (put the command after"},
            {{"--run", "", "--", "true"}, "--run: the scraper name is empty"},
            {{"--run", "x", "--restart", "always", "--", "true"}, "'always' is not a restart"},
            {{"--run", "x", "--max-restarts", "-1", "--", "true"}, "--max-restarts: '-1'"},
            {{"--stats", "--replace"}, "--replace only applies to --run"},
            {{"--stats", "--", "x"}, "only --run takes a command"},
            {{"--stats", "--interval", "1"}, "--interval only applies to --watchdog"},
            {{"--watchdog", "--interval", "abc"}, "--interval: 'abc' is not a duration"},
            {{"--watchdog", "--interval", "0"}, "--interval: '0' is below the minimum"},
            {{"--health", "--conninfo", "nonsense"}, "--conninfo: missing \"=\""},
            {{"--stats", "--conninfo", "host=x"}, "--conninfo only applies to --health and"},
            {{"--stats", "--watch", "0"}, "--watch: '0' is below the minimum"},
            {{"--stats", "--json", "--prometheus"}, "choose one"},
            {{"--health", "--prometheus"}, "--prometheus only applies to --stats"},
            {{"--watchdog", "--cluster", "c", "--conninfo", "host=x"}, "--cluster needs"},
            {{"--watchdog", "--cluster", "c", "--cluster-budget", "9"}, "--cluster needs"},
            {{"--watchdog", "--cluster-budget", "9"}, "--cluster-budget only applies with"},
            {{"--stats", "--cluster", "c"}, "--cluster only applies to --watchdog"},
            {{"--watchdog", "--cluster", "a b"}, "contains a space"},
            {{"--watchdog", "--cluster", "c", "--cluster-budget", "1"}, "from 2 to 1000000"},
            {{"--watchdog", "--metrics-listen", "example.com:80"},
             "'example.com' is not an IP address"},
            {{"--watchdog", "--metrics-listen", "127.0.0.1"}, "'127.0.0.1' is not ADDR:PORT"},
            {{"--watchdog", "--metrics-listen", "::1:80"}, "'::1:80' is not ADDR:PORT"},
            {{"--watchdog", "--metrics-listen", "127.0.0.1:70000"}, "'70000' is not a port"},
            {{"--stats", "--metrics-listen", "127.0.0.1:0"},
             "--metrics-listen only applies to --watchdog"},
            {{"--watchdog", "--wide"}, "--wide only applies to --stats"},
            {{"--stats", "--wide", "--prometheus"}, "--wide is a view of the table"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct result r;
                run_dyncoord(&r, cases[i].args);
                cr_assert_eq(r.code, 2, "%s %s: exit %d\n%s", cases[i].args[0], cases[i].args[1],
                             r.code, r.err);
                assert_contains(r.err, cases[i].message);
                assert_contains(r.err, "Try 'dyncoord --help'");
        }
}

/* ---- --run: one instance per name ---- */

Test(ops, a_second_instance_is_refused_and_replace_stops_the_first)
{
        const char *a_dir = tpath("a", 1), *c_dir = tpath("c", 1);
        char ready[600];
        struct bg a = BG_DYNCOORD("--run", "dup", "--", FAKE_SCRAPER, "wait", a_dir);
        snprintf(ready, sizeof(ready), "%s/ready", a_dir);
        wait_for_text(ready, NULL, 3000);

        struct result r;
        DYNCOORD(r, "--run", "dup", "--", "/bin/true");
        assert_exit(&r, 75);
        char expected[256];
        snprintf(expected, sizeof(expected),
                 "scraper 'dup' is already running on segment %s "
                 "under dyncoord pid %d",
                 segment, (int)a.pid);
        assert_contains(r.err, expected);
        assert_contains(r.err, "--replace");
        /* another name, or the same name on another segment, is free */
        DYNCOORD(r, "--run", "other", "--", "/bin/true");
        assert_exit(&r, 0);
        DYNCOORD(r, "--segment", "/dynshim-ops-elsewhere", "--run", "dup", "--", "/bin/true");
        assert_exit(&r, 0);

        struct bg c = BG_DYNCOORD("--run", "dup", "--replace", "--grace", "2", "--", FAKE_SCRAPER,
                                  "wait", c_dir);
        struct result ra, rc;
        bg_finish(&a, &ra, 3000);
        cr_assert_eq(ra.code, 42, "the first instance exited %d:\n%s", ra.code, ra.err);
        char sigs[64], path[600];
        snprintf(path, sizeof(path), "%s/signals", a_dir);
        cr_assert(read_text(path, sigs, sizeof(sigs)));
        cr_assert_str_eq(sigs, "TERM\n");
        snprintf(ready, sizeof(ready), "%s/ready", c_dir);
        wait_for_text(ready, NULL, 3000);
        DYNCOORD(r, "--run", "dup", "--", "/bin/true");
        assert_exit(&r, 75);
        kill(c.pid, SIGTERM);
        bg_finish(&c, &rc, 3000);
        cr_assert_eq(rc.code, 42, "%s", rc.err);
        /* the lock died with its holder */
        DYNCOORD(r, "--run", "dup", "--", "/bin/true");
        assert_exit(&r, 0);
}

Test(ops, replace_kills_an_instance_that_ignores_term_after_the_grace)
{
        const char *dir = tpath("stubborn", 1), *c_dir = tpath("c", 1);
        char script[2048], ready[600];
        snprintf(ready, sizeof(ready), "%s/ready", dir);
        snprintf(script, sizeof(script),
                 "trap '' TERM; echo $$ > %s.tmp; mv %s.tmp %s; while :; do sleep 0.05; done",
                 ready, ready, ready);
        struct bg a = BG_DYNCOORD("--run", "deaf", "--", "/bin/sh", "-c", script);
        wait_for_text(ready, NULL, 3000);
        pid_t sh = read_pid(dir, "ready");
        uint64_t t0 = now_ms();
        struct bg c = BG_DYNCOORD("--run", "deaf", "--replace", "--grace", "0.3", "--",
                                  FAKE_SCRAPER, "wait", c_dir);
        struct result ra, rc;
        bg_finish(&a, &ra, 3000);
        uint64_t took = now_ms() - t0;
        cr_assert_eq(ra.code, 137, "the old supervisor exited %d:\n%s", ra.code, ra.err);
        cr_assert_geq(took, 250, "killed after %llu ms", (unsigned long long)took);
        snprintf(ready, sizeof(ready), "%s/ready", c_dir);
        wait_for_text(ready, NULL, 3000);
        assert_dead(sh, "the old instance's program");
        kill(c.pid, SIGTERM);
        bg_finish(&c, &rc, 3000);
        cr_assert_eq(rc.code, 42, "%s", rc.err);
}

/* ---- --run: restarts and signals ---- */

static int count_lines(const char *dir)
{
        char path[600], buf[4096];
        snprintf(path, sizeof(path), "%s/count", dir);
        if (!read_text(path, buf, sizeof(buf)))
                return 0;
        int n = 0;
        for (char *p = buf; *p; p++)
                n += *p == '\n';
        return n;
}

Test(ops, restart_on_failure_restarts_up_to_max_restarts_times)
{
        const char *always = tpath("always", 1), *twice = tpath("twice", 1),
                   *never = tpath("never", 1);
        struct result r;
        DYNCOORD(r, "--run", "f", "--restart", "on-failure", "--max-restarts", "2", "--",
                 FAKE_SCRAPER, "fail", always, "100");
        assert_exit(&r, 3);
        cr_assert_eq(count_lines(always), 3, "ran %d times", count_lines(always));
        assert_contains(r.err, "restart 1 of 2");
        assert_contains(r.err, "restart 2 of 2");
        assert_contains(r.err, "not restarting after 2 restarts");
        /* succeeds on the third run: no further restart */
        DYNCOORD(r, "--run", "g", "--restart", "on-failure", "--max-restarts", "5", "--",
                 FAKE_SCRAPER, "fail", twice, "3");
        assert_exit(&r, 0);
        cr_assert_eq(count_lines(twice), 3);
        /* without --restart a failure is final */
        DYNCOORD(r, "--run", "h", "--", FAKE_SCRAPER, "fail", never, "100");
        assert_exit(&r, 3);
        cr_assert_eq(count_lines(never), 1);
}

Test(ops, signals_sent_to_dyncoord_reach_the_child_and_term_ends_it_without_restart)
{
        const char *dir = tpath("sig", 1);
        char ready[600], sigfile[600];
        snprintf(ready, sizeof(ready), "%s/ready", dir);
        snprintf(sigfile, sizeof(sigfile), "%s/signals", dir);
        struct bg b =
            BG_DYNCOORD("--run", "sig", "--restart", "on-failure", "--", FAKE_SCRAPER, "wait", dir);
        wait_for_text(ready, NULL, 3000);
        static const struct {
                int sig;
                const char *seen;
        } order[] = {
            {SIGUSR1, "USR1\n"},
            {SIGUSR2, "USR1\nUSR2\n"},
            {SIGHUP, "USR1\nUSR2\nHUP\n"},
            {SIGINT, "USR1\nUSR2\nHUP\nINT\n"},
            {SIGQUIT, "USR1\nUSR2\nHUP\nINT\nQUIT\n"},
            {SIGTERM, "USR1\nUSR2\nHUP\nINT\nQUIT\nTERM\n"},
        };
        for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
                kill(b.pid, order[i].sig);
                wait_for_text(sigfile, order[i].seen, 2000);
        }
        struct result r;
        bg_finish(&b, &r, 3000);
        cr_assert_eq(r.code, 42, "%s", r.err);
        cr_assert_null(strstr(r.err, "restarting"), "%s", r.err);
}

Test(ops, a_child_that_ignores_term_is_killed_after_the_grace)
{
        const char *dir = tpath("deaf", 1);
        char script[2048], ready[600];
        snprintf(ready, sizeof(ready), "%s/ready", dir);
        snprintf(script, sizeof(script),
                 "trap '' TERM; echo $$ > %s.tmp; mv %s.tmp %s; while :; do sleep 0.05; done",
                 ready, ready, ready);
        struct bg b = BG_DYNCOORD("--run", "deaf", "--grace", "0.3", "--restart", "on-failure",
                                  "--", "/bin/sh", "-c", script);
        wait_for_text(ready, NULL, 3000);
        pid_t sh = read_pid(dir, "ready");
        uint64_t t0 = now_ms();
        kill(b.pid, SIGTERM);
        struct result r;
        bg_finish(&b, &r, 3000);
        uint64_t took = now_ms() - t0;
        cr_assert_eq(r.code, 137, "exit %d:\n%s", r.code, r.err);
        assert_contains(r.err, "did not exit within 0.3 s of SIGTERM; killing it");
        cr_assert_geq(took, 250, "killed after %llu ms", (unsigned long long)took);
        assert_gone(sh, "the program that ignored SIGTERM");
}

/* Starts argv in a session of its own with a new pty as its controlling
 * terminal, in the terminal's foreground, as a shell would start it;
 * *master is the pty's other end. */
static pid_t run_on_pty(const char *const *argv, int *master)
{
        int slave;
        cr_assert_eq(openpty(master, &slave, NULL, NULL, NULL), 0);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
                setsid();
                ioctl(slave, TIOCSCTTY, 0);
                dup2(slave, 0);
                dup2(slave, 1);
                dup2(slave, 2);
                close(*master);
                execv(argv[0], (char *const *)argv);
                _exit(127);
        }
        close(slave);
        return pid;
}

Test(ops, ctrl_z_on_a_terminal_stops_dyncoord_with_its_child_and_fg_resumes_both)
{
        const char *dir = tpath("job", 1);
        char script[4096], ready[600], done[600];
        snprintf(ready, sizeof(ready), "%s/ready", dir);
        snprintf(done, sizeof(done), "%s/done", dir);
        snprintf(script, sizeof(script), "echo $$ > %s.tmp; mv %s.tmp %s; sleep 0.5; echo ok > %s",
                 ready, ready, ready, done);
        int master;
        pid_t pid = run_on_pty((const char *const[]){DYNCOORD_PATH, "--run", "job", "--", "/bin/sh",
                                                     "-c", script, NULL},
                               &master);
        wait_for_text(ready, NULL, 3000);
        pid_t sh = read_pid(dir, "ready");
        cr_assert_eq(tcgetpgrp(master), sh, "the child is not in the terminal's foreground");
        cr_assert_eq(write(master, "\x1a", 1), 1); /* Ctrl-Z */
        int st;
        cr_assert_eq(waitpid(pid, &st, WUNTRACED), pid);
        cr_assert(WIFSTOPPED(st), "dyncoord did not stop with its child");
        cr_assert_eq(tcgetpgrp(master), pid, "dyncoord did not take the terminal back");
        sleep_ms(700);
        char path[600], buf[16];
        snprintf(path, sizeof(path), "%s/done", dir);
        cr_assert(!read_text(path, buf, sizeof(buf)), "the child ran on while stopped");
        /* fg: the shell gives the terminal back and continues the job */
        kill(pid, SIGCONT);
        wait_for_text(done, "ok", 3000);
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
        close(master);
}

/* Ctrl-Z that catches the child between vfork and exec stops the process
 * it forked, while the child itself stays blocked in vfork and cannot stop:
 * dyncoord must still stop with the job (or the terminal's foreground
 * would hang), and fg must let the whole job go on. */
Test(ops, job_stopped_inside_vfork_stops_dyncoord_and_fg_resumes_it)
{
        int master;
        pid_t pid = run_on_pty(
            (const char *const[]){DYNCOORD_PATH, "--run", "vforkjob", "--", VFORK_STOP, NULL},
            &master);
        int st = 0;
        pid_t got = 0;
        for (int i = 0; i < 500 && got == 0; i++) { /* at most 5 s */
                got = waitpid(pid, &st, WUNTRACED | WNOHANG);
                if (got == 0)
                        sleep_ms(10);
        }
        if (got == 0)
                kill(pid, SIGKILL);
        cr_assert_eq(got, pid, "dyncoord neither stopped nor exited within 5 s");
        cr_assert(WIFSTOPPED(st), "dyncoord did not stop with its job (status %d)", st);
        cr_assert_eq(tcgetpgrp(master), pid, "dyncoord did not take the terminal back");
        kill(pid, SIGCONT);
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
        close(master);
}

/* ---- --watchdog ---- */

static struct bg start_watchdog(const char *log, const char *const *extra)
{
        const char *args[32] = {"--watchdog", "--interval", "0.2", "--log", log};
        size_t n = 5;
        for (; extra && *extra; extra++)
                args[n++] = *extra;
        args[n] = NULL;
        struct bg w = bg_dyncoord(args);
        wait_for_text(log, "watchdog started", 3000);
        return w;
}

static void stop_watchdog(struct bg *w, const char *log)
{
        struct result r;
        kill(w->pid, SIGTERM);
        bg_finish(w, &r, 3000);
        assert_exit(&r, 0);
        wait_for_text(log, "stopping on SIGTERM", 100);
}

Test(ops, watchdog_reclaims_the_slots_of_a_killed_client_within_its_interval)
{
        init_or_fail(NULL);
        const char *log = tpath("watchdog.log", 0);
        struct client c = client_start("victim", 2, 1000);
        cr_assert_eq(client_result(&c), 'y');
        cr_assert_eq(client_result(&c), 'y');
        struct bg w = start_watchdog(log, NULL);
        sleep_ms(300);
        ds_handle *h = NULL;
        cr_assert_eq(ds_attach(segment, 0, &h, NULL, 0), 0);
        struct ds_header *hdr = ds_handle_header(h);
        cr_assert_eq(hdr->held, 2);
        kill(c.pid, SIGKILL);
        waitpid(c.pid, NULL, 0);
        uint64_t t0 = now_ms();
        /* read the header without a lock: ds_stats_get would reclaim itself */
        while (__atomic_load_n(&hdr->held, __ATOMIC_ACQUIRE) != 0 && now_ms() - t0 < 2000)
                sleep_ms(5);
        uint64_t took = now_ms() - t0;
        cr_assert_lt(took, 1000, "reclaimed after %llu ms", (unsigned long long)took);
        struct ds_stats st;
        cr_assert_eq(ds_stats_get(h, &st), 0);
        cr_assert_eq(st.held, 0);
        cr_assert_eq(st.reclaimed_procs, 1);
        cr_assert_eq(st.n_scrapers, 1);
        cr_assert_eq(st.scrapers[0].reclaimed, 2);
        ds_stats_free(&st);
        ds_detach(h);
        wait_for_text(log, "reclaimed the slots of 1 dead process", 1000);
        close(c.go);
        close(c.results);
        stop_watchdog(&w, log);
}

Test(ops, watchdog_logs_usage_above_warn_usage_and_its_end)
{
        init_or_fail((const char *const[]){"--pool-size", "4", "--soft-limit", "4", "--max-limit",
                                           "4", "--warn-usage", "50", NULL});
        const char *log = tpath("watchdog.log", 0);
        struct bg w = start_watchdog(log, NULL);
        struct client c = client_start("busy", 3, 1000);
        for (int i = 0; i < 3; i++)
                cr_assert_eq(client_result(&c), 'y');
        wait_for_text(log, "warning: usage 75% (3/4 slots held, 0 waiting) is above warn_usage 50%",
                      2000);
        client_stop(&c);
        wait_for_text(log, "usage 0% (0/4) is back at or below warn_usage 50%", 2000);
        stop_watchdog(&w, log);
        /* timestamped lines: 2026-01-01T00:00:00.000Z dyncoord[PID] LEVEL: */
        char buf[8192];
        cr_assert(read_text(log, buf, sizeof(buf)));
        for (char *line = buf; *line; line = strchr(line, '\n') + 1) {
                int y, mo, d, hh, mm, ss, ms, pid;
                cr_assert_eq(sscanf(line, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ dyncoord[%d] ", &y, &mo, &d,
                                    &hh, &mm, &ss, &ms, &pid),
                             8, "not a timestamped line: %.*s", (int)strcspn(line, "\n"), line);
                cr_assert_eq(pid, w.pid);
        }
}

Test(ops, watchdog_waits_for_a_missing_segment_and_follows_a_recreated_one)
{
        const char *log = tpath("watchdog.log", 0);
        struct bg w = start_watchdog(log, NULL);
        wait_for_text(log, "does not exist", 1000);
        init_or_fail(NULL);
        wait_for_text(log, "attached to segment", 1000);
        init_or_fail((const char *const[]){"--force", "--pool-size", "4", "--soft-limit", "2",
                                           "--max-limit", "2", "--warn-usage", "40", NULL});
        wait_for_text(log, "was destroyed or recreated; attaching again", 1000);
        /* it watches the new segment: its usage warning comes from there */
        struct client c = client_start("new", 2, 1000);
        cr_assert_eq(client_result(&c), 'y');
        cr_assert_eq(client_result(&c), 'y');
        wait_for_text(log, "usage 50% (2/4 slots held, 0 waiting) is above warn_usage 40%", 2000);
        client_stop(&c);
        stop_watchdog(&w, log);
}

Test(ops, a_second_watchdog_on_the_same_segment_is_refused)
{
        init_or_fail(NULL);
        const char *log = tpath("watchdog.log", 0);
        struct bg w = start_watchdog(log, NULL);
        struct result r;
        DYNCOORD(r, "--watchdog", "--interval", "0.2");
        assert_exit(&r, 75);
        char expected[160];
        snprintf(expected, sizeof(expected),
                 "a watchdog for segment %s is already running (pid %d)", segment, (int)w.pid);
        assert_contains(r.err, expected);
        stop_watchdog(&w, log);
}

Test(ops, watchdog_reports_zombies_with_their_parent)
{
        init_or_fail(NULL);
        pid_t z = fork();
        if (z == 0)
                _exit(0);
        sleep_ms(50); /* now a zombie: we do not reap it yet */
        const char *log = tpath("watchdog.log", 0);
        struct bg w = start_watchdog(log, NULL);
        char expected[64];
        snprintf(expected, sizeof(expected), "%d (", (int)getpid());
        wait_for_text(log, "zombie process", 2000);
        wait_for_text(log, expected, 2000);
        waitpid(z, NULL, 0);
        stop_watchdog(&w, log);
}

/* ---- the server: --health --conninfo and the watchdog's ping ---- */

static int run_as_nobody(const char *const *argv)
{
        fflush(NULL);
        pid_t p = fork();
        if (p == 0) {
                int fd = open("/dev/null", O_RDWR);
                dup2(fd, 0);
                dup2(fd, 1);
                dup2(fd, 2);
                if (getuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
                        _exit(99);
                execv(argv[0], (char *const *)argv);
                _exit(98);
        }
        int st;
        waitpid(p, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(ops, health_with_an_unreachable_server_exits_1_naming_the_server)
{
        init_or_fail(NULL);
        struct result r;
        DYNCOORD(r, "--health", "--conninfo",
                 "host=/nonexistent-dynshim port=5999 dbname=db password=secret");
        assert_exit(&r, 1);
        assert_contains(r.out, "is healthy"); /* the segment is */
        assert_contains(r.err, "unhealthy: server /nonexistent-dynshim:5999/db:");
        assert_contains(r.err, "No such file or directory");
        cr_assert_null(strstr(r.err, "secret"), "the password was printed: %s", r.err);
}

Test(ops, watchdog_and_health_report_a_stopped_server_and_its_return, .timeout = 60)
{
        if (access(PGBIN "/initdb", X_OK) != 0) {
                teardown(); /* a skipped test does not reach .fini */
                cr_skip_test("PostgreSQL 15 is not installed (no " PGBIN "/initdb)");
        }
        init_or_fail(NULL);
        const char *pg = tpath("pg", 1);
        cr_assert_eq(chown(pg, 65534, 65534), 0);
        char data[600], port[16], opts[800], conninfo[900], pglog[600];
        snprintf(data, sizeof(data), "%s/data", pg);
        snprintf(pglog, sizeof(pglog), "%s/log", pg);
        snprintf(port, sizeof(port), "%d", 40000 + (int)(getpid() % 20000));
        snprintf(opts, sizeof(opts), "-k %s -p %s -c listen_addresses='' -c fsync=off", pg, port);
        snprintf(conninfo, sizeof(conninfo), "host=%s port=%s user=postgres dbname=postgres", pg,
                 port);
        cr_assert_eq(
            run_as_nobody((const char *const[]){PGBIN "/initdb", "-D", data, "-U", "postgres", "-A",
                                                "trust", "--no-sync", NULL}),
            0, "initdb failed");
        const char *const start[] = {PGBIN "/pg_ctl", "-D", data,    "-o", opts, "-l",
                                     pglog,           "-w", "start", NULL};
        const char *const stop[] = {PGBIN "/pg_ctl", "-D", data, "-m", "fast", "-w", "stop", NULL};
        cr_assert_eq(run_as_nobody(start), 0, "the server did not start");

        struct result r;
        DYNCOORD(r, "--health", "--conninfo", conninfo);
        assert_exit(&r, 0);
        char expected[700];
        snprintf(expected, sizeof(expected), "server %s:%s/postgres is healthy: SELECT 1", pg,
                 port);
        assert_contains(r.out, expected);

        const char *log = tpath("watchdog.log", 0);
        struct bg w = start_watchdog(
            log, (const char *const[]){"--ping-interval", "0.2", "--conninfo", conninfo, NULL});
        wait_for_text(log, "postgres accepts connections", 3000);
        cr_assert_eq(run_as_nobody(stop), 0, "the server did not stop");
        wait_for_text(log, "postgres is not responding", 3000);
        DYNCOORD(r, "--health", "--conninfo", conninfo);
        assert_exit(&r, 1);
        assert_contains(r.err, "unhealthy: server");
        cr_assert_eq(run_as_nobody(start), 0, "the server did not start again");
        wait_for_text(log, "postgres is up again (down for", 3000);
        stop_watchdog(&w, log);
        run_as_nobody(stop);
}

/* ---- --stats --prometheus and --watch ---- */

/* Parses `text` with prometheus_client's own parser and prints eval(expr)
 * with f: family name -> family, and v: (sample name, scraper) -> value. */
static void prom_eval(const char *text, const char *expr, char *out, size_t len)
{
        py_eval("import sys\n"
                "from prometheus_client.parser import text_string_to_metric_families\n"
                "f = {m.name: m for m in text_string_to_metric_families(sys.stdin.read())}\n"
                "v = {(s.name, s.labels.get('scraper')): s.value\n"
                "     for m in f.values() for s in m.samples}\n"
                "print(eval(sys.argv[1]))\n",
                text, expr, out, len);
}

#define assert_prom(text, expr, expected)                                                          \
        do {                                                                                       \
                char got_[4096];                                                                   \
                prom_eval((text), (expr), got_, sizeof(got_));                                     \
                cr_assert_str_eq(got_, (expected), "%s", (expr));                                  \
        } while (0)

Test(ops, prometheus_output_passes_the_reference_parser_with_the_pools_values)
{
        static struct result probe;
        run_program(&probe, NULL,
                    (char *[]){PYTHON, "-c", "import prometheus_client.parser", NULL});
        cr_assert_eq(probe.code, 0,
                     "python3-prometheus-client is needed (apt-get install "
                     "python3-prometheus-client):\n%s",
                     probe.err);
        init_or_fail((const char *const[]){"--pool-size", "3", "--soft-limit", "3", "--max-limit",
                                           "3", "--wait-timeout", "0.2", NULL});
        struct client a = client_start("we\"ird\\ na\nme", 2, 1000);
        struct client b = client_start("plain", 1, 1000);
        cr_assert_eq(client_result(&a), 'y');
        cr_assert_eq(client_result(&a), 'y');
        cr_assert_eq(client_result(&b), 'y');
        struct client c = client_start("late", 1, UINT32_MAX);
        cr_assert_eq(client_result(&c), 't');
        struct result r;
        DYNCOORD(r, "--stats", "--prometheus");
        assert_exit(&r, 0);
        assert_prom(r.out,
                    "(v[('dynshim_pool_size', None)], v[('dynshim_pool_held', None)], "
                    "v[('dynshim_pool_waiting', None)])",
                    "(3.0, 3.0, 0.0)");
        assert_prom(r.out,
                    "sorted((k[1], x) for k, x in v.items() if k[0] == 'dynshim_scraper_held')",
                    "[('late', 0.0), ('plain', 1.0), ('we\"ird\\\\ na\\nme', 2.0)]");
        assert_prom(r.out,
                    "[v[(n, 'late')] for n in ('dynshim_scraper_timeouts_total', "
                    "'dynshim_scraper_connects_total', 'dynshim_scraper_wait_seconds_count', "
                    "'dynshim_scraper_limit', 'dynshim_scraper_waiting', "
                    "'dynshim_scraper_idle_releases_total')]",
                    "[1.0, 0.0, 1.0, 3.0, 0.0, 0.0]");
        assert_prom(r.out,
                    "0.15 <= v[('dynshim_scraper_wait_seconds_sum', 'late')] < 2 and "
                    "0.15 <= v[('dynshim_scraper_wait_seconds_max', 'late')] < 2",
                    "True");
        assert_prom(r.out,
                    "(f['dynshim_pool_held'].type, f['dynshim_scraper_connects'].type, "
                    "f['dynshim_scraper_wait_seconds'].type)",
                    "('gauge', 'counter', 'summary')");
        assert_prom(r.out, "[n for n, m in f.items() if not m.documentation]", "[]");
        char segset[128];
        snprintf(segset, sizeof(segset), "{'%s'}", segment);
        assert_prom(r.out, "set(s.labels['segment'] for m in f.values() for s in m.samples)",
                    segset);
        client_stop(&c);
        client_stop(&b);
        client_stop(&a);
}

static int count_of(const char *text, const char *needle)
{
        int n = 0;
        for (const char *p = text; (p = strstr(p, needle)); p++)
                n++;
        return n;
}

/* Waits until a background program's output holds needle n times (the
 * frames of a live view), 60 s at most. */
static void wait_for_output(struct bg *b, const char *needle, int n)
{
        static char buf[1 << 16];
        for (uint64_t t0 = now_ms(); now_ms() - t0 < 60000; sleep_ms(20)) {
                ssize_t k = pread(b->out, buf, sizeof(buf) - 1, 0);
                buf[k > 0 ? k : 0] = '\0';
                if (count_of(buf, needle) >= n)
                        return;
        }
        cr_assert_fail("no %d of %s in 60 s:\n%s", n, needle, buf);
}

Test(ops, watch_on_a_terminal_redraws_in_the_alternate_screen_and_restores_it_on_sigint)
{
        init_or_fail(NULL);
        struct client c = client_start("crawler", 2, 1000);
        cr_assert_eq(client_result(&c), 'y');
        cr_assert_eq(client_result(&c), 'y');
        int master, slave;
        struct winsize ws = {.ws_row = 30, .ws_col = 100};
        cr_assert_eq(openpty(&master, &slave, NULL, NULL, &ws), 0);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
                setsid();
                dup2(slave, 0);
                dup2(slave, 1);
                dup2(slave, 2);
                execl(DYNCOORD_PATH, DYNCOORD_PATH, "--stats", "--watch", "0.2", (char *)NULL);
                _exit(127);
        }
        close(slave);
        static char out[1 << 16];
        size_t n = 0;
        uint64_t t0 = now_ms(), sent = 0;
        for (;;) {
                /* SIGINT once two frames are drawn, however long they take */
                out[n] = '\0';
                if (!sent && count_of(out, "\033[H") >= 2) {
                        kill(pid, SIGINT);
                        sent = now_ms();
                }
                struct pollfd p = {.fd = master, .events = POLLIN};
                if (poll(&p, 1, 50) > 0) {
                        ssize_t k = read(master, out + n, sizeof(out) - 1 - n);
                        if (k <= 0)
                                break; /* EIO: the program and its terminal are gone */
                        n += (size_t)k;
                }
                cr_assert(sent || now_ms() - t0 < 60000, "no two frames within 60 s:\n%s", out);
                cr_assert(!sent || now_ms() - sent < 5000, "the live view did not stop on SIGINT");
        }
        out[n] = '\0';
        int st;
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
        close(master);
        cr_assert(strncmp(out, "\033[?1049h\033[?25l", 14) == 0,
                  "no alternate screen at the start");
        const char *restore = "\033[?25h\033[?1049l";
        cr_assert(n >= strlen(restore) && strcmp(out + n - strlen(restore), restore) == 0,
                  "the terminal was not restored at the end");
        int frames = count_of(out, "\033[H");
        cr_assert_geq(frames, 2, "%d frames", frames);
        assert_contains(out, "crawler");
        assert_contains(out, "##");
        assert_contains(out, "2/15");
        assert_contains(out, "\033[K");
        client_stop(&c);
}

Test(ops, watch_into_a_pipe_prints_plain_frames_and_json_lines_until_sigterm)
{
        init_or_fail(NULL);
        struct bg b = BG_DYNCOORD("--stats", "--watch", "0.2");
        wait_for_output(&b, "SCRAPER", 2);
        kill(b.pid, SIGTERM);
        struct result r;
        bg_finish(&b, &r, 3000);
        assert_exit(&r, 0);
        cr_assert_null(strchr(r.out, '\033'), "escape sequences in a pipe:\n%s", r.out);
        int frames = 0;
        for (const char *p = r.out; (p = strstr(p, "SCRAPER")); p++)
                frames++;
        cr_assert_geq(frames, 2, "%s", r.out);

        b = BG_DYNCOORD("--stats", "--json", "--watch", "0.2");
        wait_for_output(&b, "\n", 2);
        kill(b.pid, SIGINT);
        bg_finish(&b, &r, 3000);
        assert_exit(&r, 0);
        char got[64];
        int lines = 0;
        for (char *line = r.out; *line; lines++) {
                char *nl = strchr(line, '\n');
                cr_assert_not_null(nl);
                *nl = '\0';
                json_eval(line, "(d['pool_size'], type(d['scrapers']).__name__)", got, sizeof(got));
                cr_assert_str_eq(got, "(20, 'list')");
                line = nl + 1;
        }
        cr_assert_geq(lines, 2);
}

Test(ops, watch_frames_fit_100_columns_with_long_names_and_large_counters)
{
        init_or_fail(NULL);
        char longname[64];
        memset(longname, 'w', 63);
        longname[63] = '\0';
        struct client a = client_start(longname, 1, 1000);
        struct client b = client_start("crawler", 2, 1000);
        cr_assert_eq(client_result(&a), 'y');
        cr_assert_eq(client_result(&b), 'y');
        cr_assert_eq(client_result(&b), 'y');
        inflate_counters(segment, "crawler");
        /* into a pipe the frame is 80 columns wide, as on a default terminal */
        struct bg g = BG_DYNCOORD("--stats", "--watch", "0.2");
        sleep_ms(500);
        kill(g.pid, SIGTERM);
        struct result r;
        bg_finish(&g, &r, 3000);
        assert_exit(&r, 0);
        int at;
        size_t w = widest_line(r.out, &at);
        cr_assert_leq(w, 80, "line %d is %zu columns wide:\n%s", at, w, r.out);
        assert_contains(r.out, "2/10"); /* two active: soft_limit */
        assert_contains(r.out, "123456789012");
        assert_contains(r.out, "wwwwwww~ ");
        assert_contains(r.out, "HELD/LIMIT");
        assert_contains(r.out, "TIMEOUTS");
        /* --wide adds the full table below the bars */
        g = BG_DYNCOORD("--stats", "--watch", "0.2", "--wide");
        sleep_ms(500);
        kill(g.pid, SIGTERM);
        bg_finish(&g, &r, 3000);
        assert_exit(&r, 0);
        assert_contains(r.out, "SURPL_REL");
        assert_contains(r.out, longname);
        client_stop(&b);
        client_stop(&a);
}

/* ---- documentation ---- */

Test(ops, help_and_the_man_page_document_every_option)
{
        static const char *const ops_options[] = {
            "--run",      "--replace",    "--restart",       "--max-restarts",  "--grace",
            "--watchdog", "--interval",   "--ping-interval", "--conninfo",      "--log",
            "--watch",    "--prometheus", "--wide",          "--metrics-listen"};
        struct result r;
        DYNCOORD(r, "--help");
        assert_exit(&r, 0);
        int at;
        size_t w = widest_line(r.out, &at);
        cr_assert_leq(w, 80, "--help line %d is %zu columns wide", at, w);
        for (size_t i = 0; i < sizeof(ops_options) / sizeof(ops_options[0]); i++)
                assert_contains(r.out, ops_options[i]);
        /* the man page, with roff's \- read as - */
        static char man[1 << 16], plain[1 << 16];
        cr_assert(read_text(MAN_PAGE, man, sizeof(man)), "cannot read %s", MAN_PAGE);
        size_t o = 0;
        for (const char *p = man; *p && o + 1 < sizeof(plain); p++) {
                if (p[0] == '\\' && p[1] == '-')
                        p++;
                plain[o++] = *p;
        }
        plain[o] = '\0';
        int checked = 0;
        for (const char *p = r.out; (p = strstr(p, "--")); checked++) {
                char opt[64];
                size_t n = 2 + strspn(p + 2, "abcdefghijklmnopqrstuvwxyz-");
                snprintf(opt, sizeof(opt), "%.*s", (int)n, p);
                p += n;
                if (n == 2)
                        continue; /* the "--" before CMD */
                cr_assert(strstr(plain, opt), "%s is in --help but not in dyncoord.1", opt);
        }
        cr_assert_geq(checked, 30);
}
