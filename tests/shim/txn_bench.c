/* txn_bench.c - the client's time inside libpq per select-only transaction,
 * made with the calls pgbench -S makes, for comparing a run with the shim
 * preloaded against one without (interleaved by the caller).
 *
 * Each transaction sends one select on pgbench_accounts (simple: PQsendQuery
 * of the text; prepared: PQsendQueryPrepared of a statement prepared once),
 * waits for the socket in poll(), reads with PQconsumeInput and PQisBusy,
 * takes the result and the end with PQgetResult, and checks
 * PQtransactionStatus. Every libpq call is timed on its own and summed;
 * poll() and the rest of the loop are not. The difference between two runs
 * is what the shim adds to a transaction, measured inside the transactions
 * themselves (cold caches after each wake-up included), without the
 * server's time and the machine's scheduling, which make whole-transaction
 * throughput vary by far more than the shim's share of it.
 *
 *   txn_bench simple|prepared TRANSACTIONS
 *
 * Prints: calls_ns=<mean ns inside libpq per transaction>
 *         txn_us=<mean µs of a whole transaction> calls=<calls per transaction>
 *         then SITE_ns=<mean ns per transaction> for each kind of call: send,
 *         socket, consume, isbusy, result (the first PQgetResult), end (the
 *         second, NULL) and txstatus
 * Connects with the PG* variables; needs pgbench -i tables. */
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline long long now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

enum { SEND, SOCKET, CONSUME, ISBUSY, RESULT, END, TXSTATUS, SITES };
static const char *const site_names[SITES] = {"send",   "socket", "consume", "isbusy",
                                              "result", "end",    "txstatus"};
static long long in_calls, in_site[SITES]; /* ns inside libpq, summed */
static long calls;

#define TIMED(site, expr)                                                                          \
        ({                                                                                         \
                long long t0_ = now_ns();                                                          \
                __typeof__(expr) v_ = (expr);                                                      \
                long long d_ = now_ns() - t0_;                                                     \
                in_calls += d_;                                                                    \
                in_site[site] += d_;                                                               \
                calls++;                                                                           \
                v_;                                                                                \
        })

static int fail(PGconn *c, const char *what)
{
        fprintf(stderr, "txn_bench: %s: %s", what, PQerrorMessage(c));
        PQfinish(c);
        return 1;
}

int main(int argc, char **argv)
{
        int prepared = argc == 3 && strcmp(argv[1], "prepared") == 0;
        if (argc != 3 || (!prepared && strcmp(argv[1], "simple") != 0) || atol(argv[2]) <= 0) {
                fprintf(stderr, "usage: %s simple|prepared TRANSACTIONS\n", argv[0]);
                return 2;
        }
        long n = atol(argv[2]);
        PGconn *c = PQconnectdb("");
        if (PQstatus(c) != CONNECTION_OK)
                return fail(c, "connect");
        if (prepared) {
                PGresult *r = PQprepare(
                    c, "P0_0", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", 1, NULL);
                int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
                PQclear(r);
                if (!ok)
                        return fail(c, "prepare");
        }
        unsigned seed = 12345;
        char sql[128], aid[16];
        long long start = 0;
        for (long i = -n / 10; i < n; i++) { /* a tenth more first, to warm up */
                if (i == 0) {
                        in_calls = 0;
                        memset(in_site, 0, sizeof(in_site));
                        calls = 0;
                        start = now_ns();
                }
                seed = seed * 1103515245u + 12345u;
                int a = 1 + (int)((seed >> 8) % 100000);
                int sent;
                if (prepared) {
                        snprintf(aid, sizeof(aid), "%d", a);
                        const char *vals[1] = {aid};
                        sent = TIMED(SEND, PQsendQueryPrepared(c, "P0_0", 1, vals, NULL, NULL, 0));
                } else {
                        snprintf(sql, sizeof(sql),
                                 "SELECT abalance FROM pgbench_accounts WHERE aid = %d;", a);
                        sent = TIMED(SEND, PQsendQuery(c, sql));
                }
                if (!sent)
                        return fail(c, "send");
                for (;;) {
                        struct pollfd p = {TIMED(SOCKET, PQsocket(c)), POLLIN, 0};
                        if (poll(&p, 1, -1) < 0)
                                return fail(c, "poll");
                        if (!TIMED(CONSUME, PQconsumeInput(c)))
                                return fail(c, "read");
                        if (!TIMED(ISBUSY, PQisBusy(c)))
                                break;
                }
                PGresult *r = TIMED(RESULT, PQgetResult(c));
                int ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
                PQclear(r);
                if (!ok)
                        return fail(c, "result");
                if ((r = TIMED(END, PQgetResult(c))) != NULL) {
                        PQclear(r);
                        return fail(c, "a second result");
                }
                if (TIMED(TXSTATUS, PQtransactionStatus(c)) != PQTRANS_IDLE)
                        return fail(c, "transaction status");
        }
        long long total = now_ns() - start;
        printf("calls_ns=%.1f txn_us=%.2f calls=%.2f", (double)in_calls / n, total / 1e3 / n,
               (double)calls / n);
        for (int k = 0; k < SITES; k++)
                printf(" %s_ns=%.1f", site_names[k], (double)in_site[k] / n);
        printf("\n");
        PQfinish(c);
        return 0;
}
