/* connect_bench.c - cost of a connect cycle and of a query, for comparing a
 * run with the shim preloaded against one without (interleaved by the
 * caller). Prints: connect_us=<mean PQconnectdb+PQfinish> query_us=<mean
 * PQexec("SELECT 1")>. With CONNINFO, the connects use it and may fail (a
 * connect that fails at once, without a server round trip, isolates what
 * the shim adds to a connect).
 *
 *   connect_bench CONNECTS QUERIES [CONNINFO] */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
        if (argc != 3 && argc != 4) {
                fprintf(stderr, "usage: %s CONNECTS QUERIES [CONNINFO]\n", argv[0]);
                return 2;
        }
        int n = atoi(argv[1]), q = atoi(argv[2]);
        const char *conninfo = argc == 4 ? argv[3] : "";
        double t0 = now_us();
        for (int i = 0; i < n; i++) {
                PGconn *c = PQconnectdb(conninfo);
                if (argc == 3 && PQstatus(c) != CONNECTION_OK) {
                        fprintf(stderr, "connect: %s", PQerrorMessage(c));
                        return 1;
                }
                PQfinish(c);
        }
        double t1 = now_us();
        double t2 = t1, t3 = t1;
        if (q > 0) {
                PGconn *c = PQconnectdb("");
                t2 = now_us();
                for (int i = 0; i < q; i++) {
                        PGresult *r = PQexec(c, "SELECT 1");
                        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                                fprintf(stderr, "query: %s", PQerrorMessage(c));
                                return 1;
                        }
                        PQclear(r);
                }
                t3 = now_us();
                PQfinish(c);
        }
        printf("connect_us=%.2f query_us=%.2f\n", (t1 - t0) / n, q ? (t3 - t2) / q : 0.0);
        return 0;
}
