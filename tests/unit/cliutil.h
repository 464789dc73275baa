/* cliutil.h - helpers for the tests that drive the real dyncoord binary:
 * running a program with its output captured (in the foreground or in the
 * background), evaluating its JSON with Python, and client processes that
 * hold slots through the C API. */
#ifndef DYNSHIM_CLIUTIL_H
#define DYNSHIM_CLIUTIL_H

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dynshim/coord.h"
#include "dynshim/segment.h"

#ifndef DYNCOORD_PATH
#error "DYNCOORD_PATH must name the dyncoord binary"
#endif

#define PYTHON "/usr/bin/python3"

extern char **environ;

/* ---- running a program ---- */

struct result {
        int code; /* exit status; -1 if it did not exit normally */
        char out[1 << 16];
        char err[1 << 14];
};

static inline void read_back(int fd, char *buf, size_t len)
{
        off_t n = lseek(fd, 0, SEEK_CUR);
        lseek(fd, 0, SEEK_SET);
        size_t want = (size_t)n < len - 1 ? (size_t)n : len - 1;
        ssize_t got = pread(fd, buf, want, 0);
        buf[got > 0 ? got : 0] = '\0';
}

/* Runs argv[0] with the given standard input, capturing its output. */
static inline void run_program(struct result *r, const char *input, char *const argv[])
{
        int in = memfd_create("stdin", MFD_CLOEXEC);
        int out = memfd_create("stdout", MFD_CLOEXEC);
        int err = memfd_create("stderr", MFD_CLOEXEC);
        cr_assert(in >= 0 && out >= 0 && err >= 0, "memfd_create: %s", strerror(errno));
        if (input)
                cr_assert_eq(write(in, input, strlen(input)), (ssize_t)strlen(input));
        lseek(in, 0, SEEK_SET);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, in, 0);
        posix_spawn_file_actions_adddup2(&fa, out, 1);
        posix_spawn_file_actions_adddup2(&fa, err, 2);
        pid_t pid;
        int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        cr_assert_eq(rc, 0, "could not run %s: %s", argv[0], strerror(rc));
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        r->code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        read_back(out, r->out, sizeof(r->out));
        read_back(err, r->err, sizeof(r->err));
        close(in);
        close(out);
        close(err);
}

static inline void run_dyncoord(struct result *r, const char *const *args)
{
        char *argv[64] = {(char *)DYNCOORD_PATH};
        size_t n = 1;
        for (; args[n - 1]; n++) {
                cr_assert_lt(n, 63);
                argv[n] = (char *)args[n - 1];
        }
        argv[n] = NULL;
        run_program(r, NULL, argv);
}

/* DYNCOORD(r, "--init", "--pool-size", "30") */
#define DYNCOORD(r, ...) run_dyncoord(&(r), (const char *const[]){__VA_ARGS__, NULL})

#define assert_contains(hay, needle)                                                               \
        cr_assert(strstr((hay), (needle)) != NULL, "expected '%s' in:\n%s", (needle), (hay))

static inline void assert_exit(const struct result *r, int code)
{
        cr_assert_eq(r->code, code, "exit status %d, expected %d\nstdout:\n%s\nstderr:\n%s",
                     r->code, code, r->out, r->err);
}

/* dyncoord --init with extra options (NULL-terminated); fails the test unless it exits 0. */
static inline void init_or_fail(const char *const *extra)
{
        const char *args[32] = {"--init"};
        size_t n = 1;
        for (; extra && *extra; extra++)
                args[n++] = *extra;
        args[n] = NULL;
        static struct result r;
        run_dyncoord(&r, args);
        assert_exit(&r, 0);
}

/* Runs `program` (Python source that reads standard input and prints
 * eval(sys.argv[1])) on `input` with expr as its argument, and returns what
 * it prints, without the final newline; fails the test if Python fails. */
static inline void py_eval(const char *program, const char *input, const char *expr, char *out,
                           size_t len)
{
        static struct result r;
        char *argv[] = {PYTHON, "-c", (char *)program, (char *)expr, NULL};
        run_program(&r, input, argv);
        cr_assert_eq(r.code, 0, "python failed on %s:\n%s\ninput:\n%s", expr, r.err, input);
        size_t n = strlen(r.out);
        if (n && r.out[n - 1] == '\n')
                r.out[--n] = '\0';
        snprintf(out, len, "%s", r.out);
}

/* eval(expr) over the JSON document `json`, bound to d. */
static inline void json_eval(const char *json, const char *expr, char *out, size_t len)
{
        py_eval("import json,sys\n"
                "d = json.loads(sys.stdin.buffer.read().decode('utf-8'))\n"
                "print(eval(sys.argv[1]))\n",
                json, expr, out, len);
}

#define assert_json(json, expr, expected)                                                          \
        do {                                                                                       \
                char got_[4096];                                                                   \
                json_eval((json), (expr), got_, sizeof(got_));                                     \
                cr_assert_str_eq(got_, (expected), "%s", (expr));                                  \
        } while (0)

/* ---- a client process holding slots through the C API ---- */

struct client {
        pid_t pid;
        int results; /* one byte per acquire: 'y' granted, 't' timed out, 'e' error */
        int go;      /* closing it makes the client release everything and exit */
};

static inline void client_main(const char *scraper, int slots, uint32_t timeout_ms, int results,
                               int go)
{
        ds_handle *h = NULL;
        struct ds_lease_ref leases[16];
        int held = 0;
        char c;
        if (ds_attach(NULL, 0, &h, NULL, 0) != 0 || ds_set_scraper(h, scraper) != 0) {
                c = 'e';
                (void)!write(results, &c, 1);
                _exit(1);
        }
        for (int i = 0; i < slots && i < 16; i++) {
                int rc = ds_acquire(h, timeout_ms, &leases[held], NULL, 0);
                c = rc == 0 ? 'y' : rc == -ETIMEDOUT ? 't' : 'e';
                held += rc == 0;
                (void)!write(results, &c, 1);
        }
        (void)!read(go, &c, 1); /* returns when the test closes its end */
        for (int i = 0; i < held; i++)
                ds_release(h, &leases[i]);
        ds_detach(h);
        _exit(0);
}

static inline struct client client_start(const char *scraper, int slots, uint32_t timeout_ms)
{
        int results[2], go[2];
        cr_assert_eq(pipe(results), 0);
        cr_assert_eq(pipe(go), 0);
        fflush(NULL);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                /* Keep only our two pipe ends: an inherited end of another
                 * client's pipe would keep that client from seeing EOF. */
                for (int fd = 3; fd < 1024; fd++)
                        if (fd != results[1] && fd != go[0])
                                close(fd);
                client_main(scraper, slots, timeout_ms, results[1], go[0]);
        }
        close(results[1]);
        close(go[0]);
        return (struct client){pid, results[0], go[1]};
}

static inline char client_result(const struct client *c)
{
        char r = '?';
        cr_assert_eq(read(c->results, &r, 1), 1, "client exited without a result");
        return r;
}

static inline void client_stop(struct client *c)
{
        int status;
        close(c->go);
        cr_assert_eq(waitpid(c->pid, &status, 0), c->pid);
        close(c->results);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client failed");
}

/* The widest line of text, in characters (UTF-8 continuation bytes are
 * not characters); *line_no gets its number (from 1) if not NULL. */
static inline size_t widest_line(const char *text, int *line_no)
{
        size_t widest = 0, w = 0;
        int line = 1, at = 1;
        for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
                if (*p == '\n') {
                        w = 0;
                        line++;
                        continue;
                }
                if ((*p & 0xc0) != 0x80 && ++w > widest) {
                        widest = w;
                        at = line;
                }
        }
        if (line_no)
                *line_no = at;
        return widest;
}

/* Puts large counters into the record of scraper name, as a pool that has
 * run for years would show them. */
static inline void inflate_counters(const char *segment, const char *name)
{
        ds_handle *h = NULL;
        cr_assert_eq(ds_attach(segment, 0, &h, NULL, 0), 0);
        struct ds_header *H = ds_handle_header(h);
        struct ds_scraper *sc = (struct ds_scraper *)((char *)H + ds_layout_scrapers_off(&H->cap));
        int found = 0;
        for (uint32_t i = 0; i < H->scraper_hwm; i++) {
                if (strcmp(sc[i].name, name) != 0)
                        continue;
                sc[i].connects = 123456789012ull;
                sc[i].releases = 123456789000ull;
                sc[i].timeouts = 9876543ull;
                sc[i].waits = 1000;
                sc[i].wait_ns_total = 1000ull * 12345678901ull; /* 12345.679 ms each */
                sc[i].wait_ns_max = 29999000000ull;
                found = 1;
        }
        ds_detach(h);
        cr_assert(found, "no scraper record named %s", name);
}

static inline void sleep_ms(long ms)
{
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
}

/* A program running in the background, stdin from /dev/null, its stdout
 * and stderr captured in memory files. */
struct bg {
        pid_t pid;
        int out, err;
};

static inline struct bg bg_start(char *const argv[])
{
        struct bg b;
        b.out = memfd_create("stdout", MFD_CLOEXEC);
        b.err = memfd_create("stderr", MFD_CLOEXEC);
        cr_assert(b.out >= 0 && b.err >= 0, "memfd_create: %s", strerror(errno));
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, b.out, 1);
        posix_spawn_file_actions_adddup2(&fa, b.err, 2);
        int rc = posix_spawn(&b.pid, argv[0], &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        cr_assert_eq(rc, 0, "could not run %s: %s", argv[0], strerror(rc));
        return b;
}

/* Waits up to timeout_ms for it to exit (killing it and failing if it does
 * not), then fills r with its exit status (128+N if killed by signal N)
 * and output. */
static inline void bg_finish(struct bg *b, struct result *r, unsigned timeout_ms)
{
        int status = 0;
        pid_t p = 0;
        for (unsigned t = 0; t <= timeout_ms / 5 && (p = waitpid(b->pid, &status, WNOHANG)) == 0;
             t++) {
                struct timespec ts = {0, 5000000L};
                nanosleep(&ts, NULL);
        }
        if (p == 0) {
                kill(b->pid, SIGKILL);
                waitpid(b->pid, &status, 0);
        }
        r->code = WIFEXITED(status)     ? WEXITSTATUS(status)
                  : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                        : -1;
        read_back(b->out, r->out, sizeof(r->out));
        read_back(b->err, r->err, sizeof(r->err));
        close(b->out);
        close(b->err);
        cr_assert_neq(p, 0, "%s did not exit within %u ms\nstdout:\n%s\nstderr:\n%s", "the program",
                      timeout_ms, r->out, r->err);
}

/* The background dyncoord with the given arguments. */
static inline struct bg bg_dyncoord(const char *const *args)
{
        char *argv[64] = {(char *)DYNCOORD_PATH};
        size_t n = 1;
        for (; args[n - 1]; n++) {
                cr_assert_lt(n, 63);
                argv[n] = (char *)args[n - 1];
        }
        argv[n] = NULL;
        return bg_start(argv);
}

#define BG_DYNCOORD(...) bg_dyncoord((const char *const[]){__VA_ARGS__, NULL})

#endif
