/* backend.c - whether a server backend is still there, seen from this host:
 * /proc/PID/stat names the process, its state and its start time (which
 * tells a reused PID apart). */
#include "dynshim/segment.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int ds_parse_proc_stat(const char *buf, int *is_postgres, char *state, uint64_t *start)
{
        /* "PID (COMM) S ..." where COMM may hold spaces and parentheses: it
         * ends at the last ')'. */
        const char *open = strchr(buf, '(');
        const char *close = strrchr(buf, ')');
        if (!open || !close || close < open || close[1] != ' ' || !close[2])
                return -EINVAL;
        *is_postgres = (size_t)(close - open - 1) == strlen("postgres") &&
                       memcmp(open + 1, "postgres", strlen("postgres")) == 0;
        *state = close[2];
        /* field 3 is the state; the start time is field 22 */
        const char *p = close + 2;
        for (int field = 3; field < 22; field++) {
                p = strchr(p, ' ');
                if (!p)
                        return -EINVAL;
                p++;
        }
        char *end;
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno || end == p || (*end != ' ' && *end != '\n' && *end != '\0'))
                return -EINVAL;
        *start = v;
        return 0;
}

uint64_t ds_local_backend_start(int32_t pid)
{
        if (pid <= 0)
                return 0;
        char path[40], buf[1024];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return 0;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return 0;
        buf[n] = '\0';
        int pg;
        char st;
        uint64_t start;
        if (ds_parse_proc_stat(buf, &pg, &st, &start) || !pg || st == 'Z' || st == 'X')
                return 0;
        return start ? start : 1; /* 0 means "not here" */
}
