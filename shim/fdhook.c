/* fdhook.c - socket() and close() interposers that keep a connection's fd
 * number across a release and a transparent reconnect. Off (one
 * thread-local test, errno untouched) unless the calling thread is inside
 * such a release or reconnect (ds_fdhook_begin). */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DS_EXPORT __attribute__((visibility("default")))

static __thread int fd_mode __attribute__((tls_model("initial-exec")));
static __thread int fd_target __attribute__((tls_model("initial-exec")));
static __thread int fd_kept __attribute__((tls_model("initial-exec")));

/* glibc's own close (the same cancellation point), and socket as glibc
 * makes it: a plain system call. No symbol lookup on any path. */
extern int __close(int fd);

static int real_close(int fd)
{
        return __close(fd);
}

static int real_socket(int domain, int type, int protocol)
{
        return (int)syscall(SYS_socket, domain, type, protocol);
}

void ds_fdhook_begin(int mode, int fd)
{
        fd_target = fd;
        fd_kept = 0;
        fd_mode = mode;
}

int ds_fdhook_end(void)
{
        fd_mode = 0;
        return fd_kept;
}

/* Puts a placeholder (an eventfd that never becomes readable) on fd,
 * closing what was there. 0 or -1 (errno). */
int ds_fd_placeholder(int fd)
{
        int ev = eventfd(0, EFD_CLOEXEC);
        if (ev < 0)
                return -1;
        int rc = dup3(ev, fd, O_CLOEXEC);
        real_close(ev);
        return rc < 0 ? -1 : 0;
}

DS_EXPORT int close(int fd)
{
        if (__builtin_expect(fd_mode != 0, 0) && fd == fd_target && fd >= 0) {
                int saved = errno;
                if (ds_fd_placeholder(fd) == 0) {
                        fd_kept = 1;
                        errno = saved;
                        return 0;
                }
                errno = saved;
        }
        return real_close(fd);
}

DS_EXPORT int socket(int domain, int type, int protocol)
{
        if (__builtin_expect(fd_mode == 0, 1))
                return real_socket(domain, type, protocol);
        if (fd_mode == DS_FDHOOK_RELEASE || fd_mode == DS_FDHOOK_NOSOCKET) {
                if (fd_mode == DS_FDHOOK_NOSOCKET)
                        fd_kept = 1; /* asked: the connect got as far as its socket */
                errno = EMFILE;      /* the reconnect of a release stops here */
                return -1;
        }
        int s = real_socket(domain, type, protocol);
        if (s < 0 || fd_target < 0 || s == fd_target)
                return s;
        int saved = errno;
        if (dup3(s, fd_target, (type & SOCK_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
                errno = saved;
                return s; /* the fd number changes, the connection works */
        }
        real_close(s);
        fd_kept = 1;
        errno = saved;
        return fd_target;
}
