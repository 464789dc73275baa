/* dyncoord_run.c - dyncoord --run: runs one scraper under libdynshim.so and
 * supervises it, in the manner of tini: spawn, reap_zombies,
 * wait_and_forward_signal, then terminate_descendants.
 *
 * - One live instance per scraper name and segment: an flock on a lock
 *   file in the runtime directory, held by the supervisor for its whole
 *   life. The kernel drops it when the supervisor dies, so a crash never
 *   leaves a stale registration; the file is never unlinked (that would
 *   let two processes lock two different files of one name).
 * - The supervisor is a child subreaper: every descendant orphaned on the
 *   way (a launcher's grandchildren, a daemon that forked itself away in a
 *   new session) is reparented to it and reaped when it exits.
 * - Signals are blocked and taken with sigtimedwait: there is no signal
 *   handler and no race between a signal and a wait.
 * - When the child exits, every remaining descendant gets SIGTERM (and
 *   SIGCONT), then SIGKILL after the grace period. Descendants are found by
 *   their parent chain in /proc, whatever session or process group they
 *   made, and signalled through a pidfd after the chain was re-checked, so
 *   a reused pid is never hit. The supervisor has no children left when it
 *   returns: the tree is empty. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "dyncoord.h"

#define SHIM_FILE            "libdynshim.so"
#define SHIM_CHECK_MS        500u /* how long after exec the shim may take to appear */
#define SHIM_POLL_MS         5u
#define REPLACE_KILL_WAIT_MS 3000u

#ifndef DYNSHIM_INSTALL_LIBDIR
#define DYNSHIM_INSTALL_LIBDIR "lib"
#endif
#ifndef DYNSHIM_INSTALL_FULL_LIBDIR
#define DYNSHIM_INSTALL_FULL_LIBDIR "/usr/local/lib"
#endif

/* The signals the supervisor forwards to its child. */
static const int forwarded_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

/* ---- the runtime directory and instance locks ---- */

static int ensure_private_dir(const char *dir, mode_t mode)
{
        struct stat sb;
        if (mkdir(dir, mode) != 0 && errno != EEXIST) {
                int e = errno;
                print_error("could not create the runtime directory %s: %s", dir, strerror(e));
                return -e;
        }
        if (lstat(dir, &sb) != 0) {
                int e = errno;
                print_error("could not inspect the runtime directory %s: %s", dir, strerror(e));
                return -e;
        }
        if (!S_ISDIR(sb.st_mode)) {
                print_error("the runtime directory %s is not a directory", dir);
                return -ENOTDIR;
        }
        if (sb.st_uid != geteuid()) {
                print_error("the runtime directory %s belongs to uid %u, not to us (uid %u)", dir,
                            (unsigned)sb.st_uid, (unsigned)geteuid());
                return -EACCES;
        }
        if (sb.st_mode & 022) {
                print_error("the runtime directory %s is writable by others (mode %04o)", dir,
                            (unsigned)(sb.st_mode & 07777));
                return -EACCES;
        }
        return 0;
}

void runtime_dir_path(char *out, size_t len)
{
        const char *env = getenv("DYNSHIM_RUN_DIR");
        const char *xdg = getenv("XDG_RUNTIME_DIR");
        if (env && env[0])
                snprintf(out, len, "%s", env);
        else if (geteuid() == 0)
                snprintf(out, len, "/run/dynshim");
        else if (xdg && xdg[0] == '/')
                snprintf(out, len, "%s/dynshim", xdg);
        else
                snprintf(out, len, "/tmp/dynshim-%u", (unsigned)geteuid());
}

int runtime_dir(char *out, size_t len)
{
        const char *env = getenv("DYNSHIM_RUN_DIR");
        runtime_dir_path(out, len);
        return ensure_private_dir(out, !(env && env[0]) && geteuid() == 0 ? 0755 : 0700);
}

void file_name_part(char *buf, size_t len, const char *name)
{
        size_t o = strlen(buf);
        for (const unsigned char *p = (const unsigned char *)name; *p && o + 4 < len; p++) {
                if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                    (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' ||
                    (*p == '.' && p != (const unsigned char *)name))
                        buf[o++] = (char)*p;
                else
                        o += (size_t)snprintf(buf + o, len - o, "%%%02X", *p);
        }
        buf[o] = '\0';
}

/* The pid that holds an flock on the file (dev, ino), from /proc/locks;
 * 0 if none is listed. */
static pid_t flock_holder(dev_t dev, ino_t ino)
{
        FILE *f = fopen("/proc/locks", "re");
        char line[256];
        pid_t holder = 0;
        if (!f)
                return 0;
        while (!holder && fgets(line, sizeof(line), f)) {
                char type[16], kind[16], mode[16];
                unsigned maj, min;
                unsigned long long i;
                int pid;
                const char *p = strchr(line, ':');
                if (!p || sscanf(p + 1, "%15s %15s %15s %d %x:%x:%llu", type, kind, mode, &pid,
                                 &maj, &min, &i) != 7)
                        continue;
                if (strcmp(type, "FLOCK") == 0 && i == (unsigned long long)ino &&
                    maj == major(dev) && min == minor(dev) && pid > 0)
                        holder = pid;
        }
        fclose(f);
        return holder;
}

int take_instance_lock(const char *path, int *fd, pid_t *holder)
{
        *holder = 0;
        int l = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (l < 0)
                return -errno;
        if (flock(l, LOCK_EX | LOCK_NB) != 0) {
                int e = errno;
                if (e == EWOULDBLOCK) {
                        struct stat sb;
                        /* The kernel's view first: the file's content may
                         * still name the previous holder for an instant. */
                        if (fstat(l, &sb) == 0)
                                *holder = flock_holder(sb.st_dev, sb.st_ino);
                        if (!*holder) {
                                char buf[32] = "";
                                ssize_t n = pread(l, buf, sizeof(buf) - 1, 0);
                                if (n > 0)
                                        *holder = (pid_t)atoi(buf);
                        }
                        e = EBUSY;
                }
                close(l);
                return -e;
        }
        char buf[32];
        int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
        if (ftruncate(l, 0) != 0 || pwrite(l, buf, (size_t)n, 0) != n) {
                int e = errno;
                close(l);
                return -e;
        }
        *fd = l;
        return 0;
}

/* ---- /proc ---- */

static int read_stat(pid_t pid, struct proc_entry *e)
{
        char path[64], buf[512];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return -EIO;
        buf[n] = '\0';
        /* pid (comm) state ppid ...: comm may hold spaces and parentheses */
        char *open_paren = strchr(buf, '(');
        char *close_paren = strrchr(buf, ')');
        if (!open_paren || !close_paren || close_paren < open_paren)
                return -EIO;
        int ppid;
        char state;
        if (sscanf(close_paren + 1, " %c %d", &state, &ppid) != 2)
                return -EIO;
        size_t clen = (size_t)(close_paren - open_paren - 1);
        if (clen >= sizeof(e->comm))
                clen = sizeof(e->comm) - 1;
        memcpy(e->comm, open_paren + 1, clen);
        e->comm[clen] = '\0';
        e->pid = pid;
        e->ppid = ppid;
        e->state = state;
        return 0;
}

static int by_pid(const void *a, const void *b)
{
        const struct proc_entry *x = a, *y = b;
        return (x->pid > y->pid) - (x->pid < y->pid);
}

int proc_list(struct proc_entry **out, size_t *count)
{
        DIR *d = opendir("/proc");
        struct dirent *de;
        size_t n = 0, cap = 256;
        struct proc_entry *v = malloc(cap * sizeof(*v));
        if (!d || !v) {
                int e = d ? ENOMEM : errno;
                if (d)
                        closedir(d);
                free(v);
                return -e;
        }
        while ((de = readdir(d))) {
                char *end;
                long pid = strtol(de->d_name, &end, 10);
                if (*end || pid <= 0)
                        continue;
                if (n == cap) {
                        struct proc_entry *nv = realloc(v, 2 * cap * sizeof(*v));
                        if (!nv) {
                                closedir(d);
                                free(v);
                                return -ENOMEM;
                        }
                        v = nv;
                        cap *= 2;
                }
                if (read_stat((pid_t)pid, &v[n]) == 0)
                        n++;
        }
        closedir(d);
        qsort(v, n, sizeof(*v), by_pid);
        *out = v;
        *count = n;
        return 0;
}

/* 1 if pid's chain of parents reaches root (pid != root), now. */
static int is_descendant(pid_t pid, pid_t root)
{
        struct proc_entry e;
        for (int depth = 0; depth < 4096 && pid > 1; depth++) {
                if (read_stat(pid, &e) != 0)
                        return 0;
                if (e.ppid == root)
                        return 1;
                pid = e.ppid;
        }
        return 0;
}

/* Every live (not zombie) descendant of root, into *out (malloc'd). */
static size_t find_descendants(pid_t root, pid_t **out)
{
        struct proc_entry *v = NULL;
        size_t n = 0, found = 0;
        *out = NULL;
        if (proc_list(&v, &n) != 0)
                return 0;
        char *mark = calloc(n ? n : 1, 1);
        pid_t *res = malloc((n ? n : 1) * sizeof(*res));
        if (!mark || !res)
                goto out;
        for (int changed = 1; changed;) {
                changed = 0;
                for (size_t i = 0; i < n; i++) {
                        if (mark[i])
                                continue;
                        int parent_marked = v[i].ppid == root;
                        if (!parent_marked) {
                                struct proc_entry key = {.pid = v[i].ppid};
                                struct proc_entry *p = bsearch(&key, v, n, sizeof(*v), by_pid);
                                parent_marked = p && mark[p - v];
                        }
                        if (parent_marked) {
                                mark[i] = 1;
                                changed = 1;
                        }
                }
        }
        for (size_t i = 0; i < n; i++)
                if (mark[i] && v[i].state != 'Z')
                        res[found++] = v[i].pid;
out:
        free(v);
        free(mark);
        if (found)
                *out = res;
        else
                free(res);
        return found;
}

/* Sends sig to pid if it is still a descendant of root: through a pidfd
 * opened before the check, so the signal cannot reach a process that took
 * over the pid after the check. */
static void signal_descendant(pid_t pid, pid_t root, int sig)
{
        int fd = pidfd_open(pid, 0);
        if (fd < 0) {
                if (errno == ENOSYS && is_descendant(pid, root))
                        kill(pid, sig);
                return;
        }
        if (is_descendant(pid, root))
                pidfd_send_signal(fd, sig, NULL, 0);
        close(fd);
}

/* ---- the library ---- */

static int usable_file(const char *path)
{
        return access(path, R_OK) == 0;
}

/* Finds libdynshim.so: $DYNSHIM_LIBRARY; next to the binary
 * (BIN/../lib, BIN/../LIBDIR); the build tree (BIN/../shim); the compiled-in
 * install directory. out gets its absolute, resolved path. */
static int find_library(char *out, size_t len)
{
        const char *env = getenv("DYNSHIM_LIBRARY");
        char exe[PATH_MAX], cand[PATH_MAX + 64], resolved[PATH_MAX];
        if (env && env[0]) {
                if (!realpath(env, resolved)) {
                        print_error("DYNSHIM_LIBRARY names '%s', which cannot be used: %s", env,
                                    strerror(errno));
                        return -ENOENT;
                }
                goto found;
        }
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (n > 0) {
                exe[n] = '\0';
                char *slash = strrchr(exe, '/');
                if (slash)
                        *slash = '\0';
                const char *const rel[] = {"../lib/", "../" DYNSHIM_INSTALL_LIBDIR "/", "../shim/"};
                for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
                        if (i == 1 && strcmp(rel[1], rel[0]) == 0)
                                continue;
                        snprintf(cand, sizeof(cand), "%s/%s" SHIM_FILE, exe, rel[i]);
                        if (usable_file(cand) && realpath(cand, resolved))
                                goto found;
                }
        }
        snprintf(cand, sizeof(cand), "%s/" SHIM_FILE, DYNSHIM_INSTALL_FULL_LIBDIR);
        if (usable_file(cand) && realpath(cand, resolved))
                goto found;
        print_error("cannot find " SHIM_FILE " (looked in $DYNSHIM_LIBRARY, then ../lib, "
                    "../" DYNSHIM_INSTALL_LIBDIR
                    " and ../shim next to %s, then " DYNSHIM_INSTALL_FULL_LIBDIR
                    "); set DYNSHIM_LIBRARY to its path",
                    n > 0 ? exe : "the dyncoord binary");
        return -ENOENT;
found:
        if (strpbrk(resolved, " :")) {
                print_error("the library path '%s' contains a space or a colon, which LD_PRELOAD "
                            "cannot carry",
                            resolved);
                return -EINVAL;
        }
        snprintf(out, len, "%s", resolved);
        return 0;
}

/* LD_PRELOAD for the child: lib first, then what was there (without lib). */
static char *make_preload(const char *lib)
{
        const char *old = getenv("LD_PRELOAD");
        size_t n = strlen(lib) + (old ? strlen(old) : 0) + 2;
        char *v = malloc(n), *copy = old ? strdup(old) : NULL;
        if (!v || (old && !copy)) {
                free(v);
                free(copy);
                return NULL;
        }
        strcpy(v, lib);
        if (copy) {
                char *save = NULL;
                for (char *t = strtok_r(copy, " :", &save); t; t = strtok_r(NULL, " :", &save))
                        if (strcmp(t, lib) != 0) {
                                strcat(v, ":");
                                strcat(v, t);
                        }
        }
        free(copy);
        return v;
}

/* 1: lib is mapped in pid; 0: it is not and will not be (another shared
 * object is mapped already, which the loader does after the preloads, or
 * the maps cannot be read: a setuid program); -1: cannot tell yet. */
static int shim_state(pid_t pid, const char *lib)
{
        char path[64], line[PATH_MAX + 128];
        snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return errno == EACCES ? 0 : -1;
        int other = 0, found = 0;
        size_t liblen = strlen(lib);
        while (!found && fgets(line, sizeof(line), f)) {
                char *file = strchr(line, '/');
                if (!file)
                        continue;
                file[strcspn(file, "\n")] = '\0';
                if (strncmp(file, lib, liblen) == 0 && file[liblen] == '\0')
                        found = 1;
                else if (strstr(file, ".so") && !strstr(file, "/ld-linux"))
                        other = 1;
        }
        fclose(f);
        return found ? 1 : other ? 0 : -1;
}

/* ---- supervision ---- */

struct supervisor {
        const struct options *o;
        const char *lib;
        char *preload;
        sigset_t forwarded; /* + SIGCHLD: blocked, taken by sigtimedwait */
        sigset_t orig_mask;
        pid_t self;
        int tty;      /* fd of our controlling terminal if we are in its foreground */
        int stopping; /* a stop signal arrived: no restart */
        int last_stop_sig;
};

static void sleep_ns(uint64_t ns, const sigset_t *set, int *sig)
{
        struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
        siginfo_t info;
        *sig = sigtimedwait(set, &info, &ts);
}

/* Forks and execs the command. Returns the child's pid, or a positive exit
 * status (126, 127) with the reason printed when it could not be run. */
static pid_t spawn(struct supervisor *s, int *exit_status)
{
        int pipefd[2];
        *exit_status = 0;
        if (pipe2(pipefd, O_CLOEXEC) != 0) {
                print_error("could not create a pipe: %s", strerror(errno));
                *exit_status = 1;
                return -1;
        }
        fflush(NULL);
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0) {
                print_error("could not fork: %s", strerror(errno));
                *exit_status = 1;
                close(pipefd[0]);
                close(pipefd[1]);
                return -1;
        }
        if (pid == 0) {
                close(pipefd[0]);
                /* Its own process group, in the terminal's foreground when
                 * we had it: Ctrl-C reaches the scraper once, directly. */
                setpgid(0, 0);
                if (s->tty >= 0)
                        tcsetpgrp(s->tty, getpid());
                /* Dies with the supervisor, so no instance outlives the
                 * lock that guards its name. */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(1);
                setenv("LD_PRELOAD", s->preload, 1);
                setenv("DYNSHIM_SCRAPER", s->o->run_name, 1);
                if (s->o->segment)
                        setenv("DYNSHIM_SEGMENT", s->o->segment, 1);
                sigprocmask(SIG_SETMASK, &s->orig_mask, NULL);
                execvp(s->o->command[0], s->o->command);
                int e = errno;
                (void)!write(pipefd[1], &e, sizeof(e));
                _exit(e == ENOENT ? DS_EXIT_NOT_FOUND : DS_EXIT_NOT_EXEC);
        }
        setpgid(pid, pid);
        close(pipefd[1]);
        int e = 0;
        ssize_t n;
        while ((n = read(pipefd[0], &e, sizeof(e))) < 0 && errno == EINTR)
                ;
        close(pipefd[0]);
        if (n == (ssize_t)sizeof(e)) {
                print_error("could not run '%s': %s", s->o->command[0], strerror(e));
                int st;
                waitpid(pid, &st, 0);
                if (s->tty >= 0)
                        tcsetpgrp(s->tty, getpgrp());
                *exit_status = e == ENOENT ? DS_EXIT_NOT_FOUND : DS_EXIT_NOT_EXEC;
                return -1;
        }
        return pid;
}

/* Reaps every child that has exited (ours and reparented orphans).
 * Returns 1 once `child` was among them (its status in *status), 0 if not,
 * -1 if we have no children at all. */
static int reap_zombies(pid_t child, int *status)
{
        int got_child = 0;
        for (;;) {
                int st;
                pid_t p = waitpid(-1, &st, WNOHANG);
                if (p > 0) {
                        if (p == child) {
                                *status = st;
                                got_child = 1;
                        }
                        continue;
                }
                if (p < 0 && errno == EINTR)
                        continue;
                if (p < 0 && errno == ECHILD && !got_child)
                        return -1;
                return got_child;
        }
}

/* Signals that ask the scraper to stop: no restart after them, and KILL
 * after the grace period. SIGHUP is not one (programs reload on it). */
static int is_stop_signal(int sig)
{
        return sig == SIGINT || sig == SIGTERM || sig == SIGQUIT;
}

/* Job control on a terminal: the child, in the foreground, was stopped
 * (Ctrl-Z). Takes the terminal back and stops too, so that the shell sees
 * the job stopped; once continued, gives the terminal back to the child if
 * we are in the foreground again (fg, not bg) and continues it. */
static void suspend_with_child(const struct supervisor *s, pid_t child)
{
        tcsetpgrp(s->tty, getpgrp());
        kill(getpid(), SIGSTOP);
        if (tcgetpgrp(s->tty) == getpgrp())
                tcsetpgrp(s->tty, child);
        killpg(child, SIGCONT);
}

/* Whether the child is blocked in vfork (state D) while the process it
 * forked was stopped before its exec: Ctrl-Z reached the job in between
 * (a shell starting a command, posix_spawn). The child cannot stop until
 * that process goes on, so waitpid never reports it stopped and the job
 * would hold the terminal's foreground, neither running nor stopped. */
static int child_stuck_in_vfork(pid_t child)
{
        struct proc_entry c, *v;
        size_t n;
        if (read_stat(child, &c) != 0 || c.state != 'D' || proc_list(&v, &n) != 0)
                return 0;
        int stuck = 0;
        for (size_t i = 0; i < n && !stuck; i++)
                stuck = v[i].ppid == child && v[i].state == 'T';
        free(v);
        return stuck;
}

/* Waits for signals and children until the child has exited; forwards
 * every forwarded signal to it; checks once that the shim is mapped. A
 * child told to stop (INT, TERM, HUP, QUIT) that is still there after the
 * grace period is killed. */
static int wait_and_forward_signal(struct supervisor *s, pid_t child)
{
        uint64_t check_until = ds_now_ns() + SHIM_CHECK_MS * 1000000ull;
        uint64_t kill_at = 0;
        int checking = 1, status = 0, killed = 0;
        for (;;) {
                if (s->tty >= 0) {
                        pid_t p = waitpid(child, &status, WNOHANG | WUNTRACED);
                        if (p == child && WIFSTOPPED(status))
                                suspend_with_child(s, child);
                        else if (p == child)
                                return status;
                        else if (p == 0 && child_stuck_in_vfork(child))
                                suspend_with_child(s, child); /* the whole job goes on at fg */
                }
                int r = reap_zombies(child, &status);
                if (r == 1)
                        return status;
                if (checking) {
                        int st = shim_state(child, s->lib);
                        if (st == 1 || (st == -1 && ds_now_ns() < check_until)) {
                                checking = st != 1;
                        } else {
                                checking = 0;
                                print_warning(SHIM_FILE
                                              " (%s) is not loaded in '%s' (pid %d): a "
                                              "static or setuid program ignores LD_PRELOAD, so "
                                              "its connections are not coordinated",
                                              s->lib, s->o->command[0], (int)child);
                        }
                }
                /* Told to stop and the grace period is over: KILL. */
                if (s->stopping && !killed && ds_now_ns() >= kill_at) {
                        fprintf(stderr,
                                PROG ": '%s' (pid %d) did not exit within %.1f s of SIG%s; "
                                     "killing it\n",
                                s->o->command[0], (int)child, s->o->grace_ms / 1000.0,
                                sigabbrev_np(s->last_stop_sig));
                        kill(child, SIGKILL);
                        killed = 1;
                }
                uint64_t wait = checking ? SHIM_POLL_MS * 1000000ull : 1000000000ull;
                uint64_t now = ds_now_ns();
                if (s->stopping && !killed && kill_at - now < wait)
                        wait = kill_at - now;
                int sig;
                sleep_ns(wait, &s->forwarded, &sig);
                if (sig > 0 && sig != SIGCHLD) {
                        if (is_stop_signal(sig) && !s->stopping) {
                                s->stopping = 1;
                                s->last_stop_sig = sig;
                                kill_at = ds_now_ns() + (uint64_t)s->o->grace_ms * 1000000ull;
                        }
                        kill(child, sig);
                }
        }
}

/* Sends TERM (and CONT) to every remaining descendant, then KILL after
 * the grace period; reaps them all. A second stop signal skips the rest
 * of the grace period. Returns when we have no children left. */
static void terminate_descendants(struct supervisor *s)
{
        uint64_t kill_at = ds_now_ns() + (uint64_t)s->o->grace_ms * 1000000ull;
        pid_t *termed = NULL;
        size_t n_termed = 0;
        int killing = 0, dummy;
        for (;;) {
                if (reap_zombies(-1, &dummy) == -1)
                        break;
                if (!killing && ds_now_ns() >= kill_at)
                        killing = 1;
                pid_t *d;
                size_t n = find_descendants(s->self, &d);
                for (size_t i = 0; i < n; i++) {
                        if (killing) {
                                signal_descendant(d[i], s->self, SIGKILL);
                                continue;
                        }
                        int seen = 0;
                        for (size_t j = 0; j < n_termed && !seen; j++)
                                seen = termed[j] == d[i];
                        if (seen)
                                continue;
                        pid_t *nt = realloc(termed, (n_termed + 1) * sizeof(*termed));
                        if (nt) {
                                termed = nt;
                                termed[n_termed++] = d[i];
                        }
                        signal_descendant(d[i], s->self, SIGTERM);
                        signal_descendant(d[i], s->self, SIGCONT);
                }
                free(d);
                int sig;
                sleep_ns(20 * 1000000ull, &s->forwarded, &sig);
                if (sig > 0 && is_stop_signal(sig))
                        killing = 1;
        }
        free(termed);
}

static int exit_status_of(int status)
{
        if (WIFEXITED(status))
                return WEXITSTATUS(status);
        if (WIFSIGNALED(status))
                return 128 + WTERMSIG(status);
        return 1;
}

static int failed(int status)
{
        return !WIFEXITED(status) || WEXITSTATUS(status) != 0;
}

/* Stops the supervisor holding the lock: TERM, then after the grace
 * period KILL for it and its descendants; waits until the lock is ours. */
static int replace_instance(const struct options *o, const char *path, pid_t holder, int *fd)
{
        uint64_t start = ds_now_ns();
        uint64_t kill_at = start + (uint64_t)o->grace_ms * 1000000ull;
        uint64_t give_up = kill_at + REPLACE_KILL_WAIT_MS * 1000000ull;
        int killed = 0;
        fprintf(stderr, PROG ": stopping the running instance of '%s' (pid %d)\n", o->run_name,
                (int)holder);
        if (holder > 0)
                kill(holder, SIGTERM);
        for (;;) {
                struct timespec ts = {0, 20 * 1000000L};
                pid_t h2;
                int rc = take_instance_lock(path, fd, &h2);
                if (rc == 0)
                        return 0;
                if (rc != -EBUSY) {
                        print_error("could not lock %s: %s", path, strerror(-rc));
                        return 1;
                }
                if (h2 > 0)
                        holder = h2;
                uint64_t now = ds_now_ns();
                if (now >= give_up) {
                        print_error("the running instance of '%s' (pid %d) did not stop",
                                    o->run_name, (int)holder);
                        return 1;
                }
                if (!killed && now >= kill_at && holder > 0) {
                        pid_t *d;
                        size_t n = find_descendants(holder, &d);
                        kill(holder, SIGKILL);
                        for (size_t i = 0; i < n; i++)
                                signal_descendant(d[i], holder, SIGKILL);
                        free(d);
                        killed = 1;
                }
                nanosleep(&ts, NULL);
        }
}

/* If we are in the foreground of a terminal, its fd (for tcsetpgrp). */
static int foreground_tty(void)
{
        for (int fd = 0; fd <= 2; fd++)
                if (isatty(fd) && tcgetpgrp(fd) == getpgrp())
                        return fd;
        return -1;
}

int cmd_run(const struct options *o)
{
        struct supervisor s = {.o = o, .tty = -1};
        char lib[PATH_MAX], dir[PATH_MAX], path[PATH_MAX + 512];
        int lock = -1, rc, status = 0;
        if ((rc = find_library(lib, sizeof(lib))))
                return rc == -ENOENT ? 1 : rc;
        s.lib = lib;
        if ((rc = runtime_dir(dir, sizeof(dir))))
                return 1;
        snprintf(path, sizeof(path), "%s/run.", dir);
        file_name_part(path, sizeof(path), ds_segment_name(o->segment) + 1);
        strncat(path, ".", sizeof(path) - strlen(path) - 1);
        file_name_part(path, sizeof(path), o->run_name);
        strncat(path, ".lock", sizeof(path) - strlen(path) - 1);
        pid_t holder;
        rc = take_instance_lock(path, &lock, &holder);
        if (rc == -EBUSY && o->replace) {
                if ((rc = replace_instance(o, path, holder, &lock)))
                        return rc;
        } else if (rc == -EBUSY) {
                print_error("scraper '%s' is already running on segment %s under dyncoord pid %d; "
                            "stop it first or use --replace",
                            o->run_name, ds_segment_name(o->segment), (int)holder);
                return DS_EXIT_RUNNING;
        } else if (rc) {
                print_error("could not lock %s: %s", path, strerror(-rc));
                return 1;
        }
        if (!(s.preload = make_preload(lib))) {
                print_error("out of memory");
                close(lock);
                return 1;
        }
        s.self = getpid();
        if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
                print_warning("could not become a child subreaper: %s; orphaned descendants will "
                              "not be reaped here",
                              strerror(errno));
        sigemptyset(&s.forwarded);
        for (size_t i = 0; i < sizeof(forwarded_signals) / sizeof(forwarded_signals[0]); i++)
                sigaddset(&s.forwarded, forwarded_signals[i]);
        sigaddset(&s.forwarded, SIGCHLD);
        sigset_t block = s.forwarded;
        sigaddset(&block, SIGTTOU);
        sigaddset(&block, SIGTTIN);
        sigprocmask(SIG_BLOCK, &block, &s.orig_mask);
        s.tty = foreground_tty();

        int ret = 0;
        for (uint32_t restarts = 0;; restarts++) {
                int spawn_status;
                pid_t child = spawn(&s, &spawn_status);
                if (child < 0) {
                        ret = spawn_status;
                        break;
                }
                status = wait_and_forward_signal(&s, child);
                terminate_descendants(&s);
                if (s.tty >= 0)
                        tcsetpgrp(s.tty, getpgrp());
                ret = exit_status_of(status);
                if (!o->restart_on_failure || s.stopping || !failed(status))
                        break;
                if (restarts >= o->max_restarts) {
                        fprintf(stderr,
                                PROG ": '%s' failed with status %d; not restarting after %u "
                                     "restart%s\n",
                                o->run_name, ret, restarts, restarts == 1 ? "" : "s");
                        break;
                }
                /* 0.1 s, doubling, at most 10 s between restarts */
                uint64_t delay_ms = restarts < 7 ? 100ull << restarts : 10000;
                if (delay_ms > 10000)
                        delay_ms = 10000;
                fprintf(stderr,
                        PROG ": '%s' failed with status %d; restarting in %.1f s (restart %u of "
                             "%u)\n",
                        o->run_name, ret, delay_ms / 1000.0, restarts + 1, o->max_restarts);
                uint64_t until = ds_now_ns() + delay_ms * 1000000ull;
                while (!s.stopping && ds_now_ns() < until) {
                        int sig;
                        sleep_ns(until - ds_now_ns(), &s.forwarded, &sig);
                        if (sig > 0 && is_stop_signal(sig))
                                s.stopping = 1;
                        int dummy;
                        reap_zombies(-1, &dummy);
                }
                if (s.stopping)
                        break;
        }
        free(s.preload);
        close(lock);
        sigprocmask(SIG_SETMASK, &s.orig_mask, NULL);
        return ret;
}
