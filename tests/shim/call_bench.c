/* call_bench.c - per-call cost of the calls the shim tracks on an open
 * connection, for comparing a run with the shim preloaded against one
 * without (interleaved by the caller). Prints the mean in ns of:
 * PQexec("SELECT 1") over the server's unix socket, PQconsumeInput on an
 * idle connection (one recv() that finds nothing), and the state getters
 * PQstatus and PQtransactionStatus (no system call at all).
 *
 *   call_bench QUERIES CALLS */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
        if (argc != 3) {
                fprintf(stderr, "usage: %s QUERIES CALLS\n", argv[0]);
                return 2;
        }
        int q = atoi(argv[1]), n = atoi(argv[2]);
        PGconn *c = PQconnectdb("");
        if (PQstatus(c) != CONNECTION_OK) {
                fprintf(stderr, "connect: %s", PQerrorMessage(c));
                return 1;
        }
        double t0 = now_ns();
        for (int i = 0; i < q; i++) {
                PGresult *r = PQexec(c, "SELECT 1");
                if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                        fprintf(stderr, "query: %s", PQerrorMessage(c));
                        return 1;
                }
                PQclear(r);
        }
        double t1 = now_ns();
        for (int i = 0; i < n; i++)
                if (!PQconsumeInput(c))
                        return 1;
        double t2 = now_ns();
        long sum = 0;
        for (int i = 0; i < n; i++)
                sum += PQstatus(c);
        double t3 = now_ns();
        for (int i = 0; i < n; i++)
                sum += PQtransactionStatus(c);
        double t4 = now_ns();
        printf("exec_ns=%.0f consume_ns=%.1f status_ns=%.1f txstatus_ns=%.1f (%ld)\n",
               (t1 - t0) / q, (t2 - t1) / n, (t3 - t2) / n, (t4 - t3) / n, sum);
        PQfinish(c);
        return 0;
}
