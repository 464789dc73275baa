/* fake_scraper.c - a stand-in for a scraper run under dyncoord --run.
 *
 *   fake_scraper tree DIR STATUS   starts an orphan that exits (a zombie
 *       unless the supervisor reaps it), a daemon in its own session and
 *       one that also ignores SIGTERM; writes their pids to DIR/orphan,
 *       DIR/daemon and DIR/stubborn and, to DIR/orphan_state, "reaped" once
 *       the orphan's /proc entry is gone or "zombie" after 3 s; then exits
 *       with STATUS.
 *   fake_scraper selfkill SIGNUM   kills itself with signal SIGNUM.
 *   fake_scraper env FILE          writes LD_PRELOAD, DYNSHIM_SCRAPER,
 *       DYNSHIM_SEGMENT and whether the first LD_PRELOAD entry is mapped.
 *   fake_scraper wait DIR          writes DIR/ready, records every signal
 *       it gets in DIR/signals, exits 42 on SIGTERM.
 *   fake_scraper fail DIR N        appends a line to DIR/count; exits 3
 *       while it holds fewer than N lines, else 0. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *dir;

static void write_file(const char *name, const char *text)
{
        char path[4096], tmp[4200];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        snprintf(tmp, sizeof(tmp), "%s.tmp%d", path, (int)getpid());
        FILE *f = fopen(tmp, "w");
        if (!f)
                _exit(90);
        fputs(text, f);
        fclose(f);
        rename(tmp, path);
}

static void write_pid(const char *name, pid_t pid)
{
        char buf[32];
        snprintf(buf, sizeof(buf), "%d\n", (int)pid);
        write_file(name, buf);
}

static void sleep_ms(long ms)
{
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
}

static void daemonise(const char *name, int ignore_term)
{
        pid_t p = fork();
        if (p != 0) {
                waitpid(p, NULL, 0);
                return;
        }
        setsid();
        if (fork() != 0)
                _exit(0);
        setpgid(0, 0);
        if (ignore_term)
                signal(SIGTERM, SIG_IGN);
        write_pid(name, getpid());
        for (;;)
                pause();
}

static int tree(int status)
{
        int pfd[2];
        if (pipe(pfd) != 0)
                return 91;
        pid_t g1 = fork();
        if (g1 == 0) {
                pid_t g2 = fork();
                if (g2 == 0) {
                        sleep_ms(50);
                        _exit(0);
                }
                (void)!write(pfd[1], &g2, sizeof(g2));
                _exit(0);
        }
        pid_t orphan = 0;
        if (read(pfd[0], &orphan, sizeof(orphan)) != sizeof(orphan))
                return 92;
        waitpid(g1, NULL, 0);
        write_pid("orphan", orphan);
        daemonise("daemon", 0);
        daemonise("stubborn", 1);
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d", (int)orphan);
        const char *state = "zombie";
        for (int i = 0; i < 300; i++) {
                if (access(path, F_OK) != 0) {
                        state = "reaped";
                        break;
                }
                sleep_ms(10);
        }
        write_file("orphan_state", state);
        return status;
}

static int env_report(const char *file)
{
        const char *pre = getenv("LD_PRELOAD");
        char first[4096] = "";
        int mapped = 0;
        if (pre)
                snprintf(first, sizeof(first), "%.*s", (int)strcspn(pre, ": "), pre);
        FILE *m = fopen("/proc/self/maps", "r");
        char line[8192];
        while (m && first[0] && fgets(line, sizeof(line), m))
                if (strstr(line, first))
                        mapped = 1;
        if (m)
                fclose(m);
        FILE *f = fopen(file, "w");
        if (!f)
                return 93;
        fprintf(f, "LD_PRELOAD=%s\nDYNSHIM_SCRAPER=%s\nDYNSHIM_SEGMENT=%s\nmapped=%d\n",
                pre ? pre : "", getenv("DYNSHIM_SCRAPER") ? getenv("DYNSHIM_SCRAPER") : "",
                getenv("DYNSHIM_SEGMENT") ? getenv("DYNSHIM_SEGMENT") : "", mapped);
        fclose(f);
        return 0;
}

static int signals_fd = -1;

static void on_signal(int sig)
{
        const char *name = sig == SIGTERM   ? "TERM\n"
                           : sig == SIGINT  ? "INT\n"
                           : sig == SIGHUP  ? "HUP\n"
                           : sig == SIGQUIT ? "QUIT\n"
                           : sig == SIGUSR1 ? "USR1\n"
                           : sig == SIGUSR2 ? "USR2\n"
                                            : "OTHER\n";
        (void)!write(signals_fd, name, strlen(name));
        if (sig == SIGTERM)
                _exit(42);
}

static int wait_for_signals(void)
{
        char path[4096];
        snprintf(path, sizeof(path), "%s/signals", dir);
        signals_fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (signals_fd < 0)
                return 94;
        const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
        for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
                struct sigaction sa = {.sa_handler = on_signal};
                sigaction(sigs[i], &sa, NULL);
        }
        write_pid("ready", getpid());
        for (;;)
                pause();
}

static int fail(long n)
{
        char path[4096], line[64];
        snprintf(path, sizeof(path), "%s/count", dir);
        FILE *f = fopen(path, "a+");
        if (!f)
                return 95;
        fputs("run\n", f);
        fflush(f);
        rewind(f);
        long lines = 0;
        while (fgets(line, sizeof(line), f))
                lines++;
        fclose(f);
        return lines < n ? 3 : 0;
}

int main(int argc, char *argv[])
{
        if (argc == 4 && strcmp(argv[1], "tree") == 0) {
                dir = argv[2];
                return tree(atoi(argv[3]));
        }
        if (argc == 3 && strcmp(argv[1], "selfkill") == 0) {
                signal(atoi(argv[2]), SIG_DFL);
                raise(atoi(argv[2]));
                return 96;
        }
        if (argc == 3 && strcmp(argv[1], "env") == 0)
                return env_report(argv[2]);
        if (argc == 3 && strcmp(argv[1], "wait") == 0) {
                dir = argv[2];
                return wait_for_signals();
        }
        if (argc == 4 && strcmp(argv[1], "fail") == 0) {
                dir = argv[2];
                return fail(atol(argv[3]));
        }
        fprintf(stderr, "fake_scraper: bad arguments\n");
        return 2;
}
