/* vfork_stop.c - a program whose vfork child is stopped before its exec,
 * as Ctrl-Z can catch a shell or posix_spawn between vfork and exec: the
 * parent then stays blocked in vfork until the child is continued. The
 * child execs true; the parent exits with the child's status. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
        pid_t p = vfork();
        if (p == 0) {
                raise(SIGTSTP);
                execl("/bin/true", "true", (char *)NULL);
                _exit(127);
        }
        int st;
        if (p < 0 || waitpid(p, &st, 0) != p)
                return 1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
