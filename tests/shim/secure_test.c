/* secure_test.c - the shim in a process that runs with AT_SECURE (setuid,
 * setgid, file capabilities). Linked against libdynshim.so directly (the
 * loader ignores most of LD_PRELOAD in such a process); secure.sh runs a
 * setuid copy of it with a hostile DYNSHIM_* environment, and a plain copy
 * as the control. Prints AT_SECURE, then makes one connect through the
 * shim (to a server that does not exist: the shim still reads its
 * environment, attaches and acquires first). */
#include <libpq-fe.h>
#include <stdio.h>
#include <sys/auxv.h>

int main(void)
{
        printf("AT_SECURE=%lu\n", getauxval(AT_SECURE));
        fflush(stdout);
        PGconn *c = PQconnectdb("host=/nonexistent-dynshim-dir dbname=x connect_timeout=2");
        PQfinish(c);
        return 0;
}
