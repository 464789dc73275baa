/* pair_bench.c - the shim's share of a one-client select-only transaction,
 * measured as a ratio inside one process, on one connection, with every
 * transaction paired with its neighbour.
 *
 * Two runs of pgbench, one with the shim and one without, differ here by
 * more than the shim's whole cost: this machine's other load, where the
 * scheduler puts the two processes, and the server's own state. This
 * program takes those out of the comparison. It makes the calls of a
 * pgbench -S transaction (as txn_bench does) through two tables of
 * functions in turn, transaction by transaction:
 *
 *   via     the names as the dynamic linker bound them for this program:
 *           with a preload, its interposers (the shim, or any other);
 *   direct  libpq's own definitions, found in its dynamic symbol table, so
 *           no preload is in the way.
 *
 * Both use the same connection, server process and caches, and alternate
 * (the order swapped every block), so whatever slows the machine down
 * slows both alike. Each whole transaction is timed, the wait for the
 * server included, as pgbench's throughput counts it. Without a preload the
 * two tables are the same functions, and the ratio shows the method's own
 * noise.
 *
 *   pair_bench simple|prepared|connect BLOCKS TRANSACTIONS_PER_BLOCK [CLIENTS]
 *
 * connect times a connect → SELECT 1 → finish cycle instead, a new
 * connection each time, as pgbench -C does: libpq's own PQconnectdb calls
 * its other exports through the shim's interposers, which pass calls made
 * from inside libpq straight through, so the direct cycle takes no slot.
 *
 * With CLIENTS (default 1), that many threads do the same at once, each on
 * its own connection, as pgbench -c N -j N does; a block's times are then
 * summed over the threads.
 *
 * Prints: ratio=<median over blocks of direct time / via time, that is
 *         via's throughput relative to direct> lo= hi=<95 % bootstrap
 *         interval of that median> via_us= direct_us=<mean transaction
 *         times> diff_ns=<mean via - direct per transaction> blocks=
 * Connects with the PG* variables; needs pgbench -i tables. */
#include <elf.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct api {
        int (*send)(PGconn *, const char *);
        int (*send_prepared)(PGconn *, const char *, int, const char *const *, const int *,
                             const int *, int);
        int (*socket)(const PGconn *);
        int (*consume)(PGconn *);
        int (*is_busy)(PGconn *);
        PGresult *(*result)(PGconn *);
        PGTransactionStatusType (*tx_status)(const PGconn *);
        PGconn *(*connectdb)(const char *);
        PGresult *(*exec)(PGconn *, const char *);
        void (*finish)(PGconn *);
        ConnStatusType (*status)(const PGconn *);
};

static const char *const api_names[] = {
    "PQsendQuery", "PQsendQueryPrepared", "PQsocket",    "PQconsumeInput", "PQisBusy",
    "PQgetResult", "PQtransactionStatus", "PQconnectdb", "PQexec",         "PQfinish",
    "PQstatus"};
#define API_N (sizeof(api_names) / sizeof(api_names[0]))
_Static_assert(sizeof(struct api) == API_N * sizeof(void (*)(void)), "one name per function");

static inline long long now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- libpq's own definitions, from its file's .dynsym ---- */

struct found {
        char path[4096];
        ElfW(Addr) base;
};

static int find_libpq(struct dl_phdr_info *info, size_t size, void *arg)
{
        (void)size;
        struct found *f = arg;
        const char *slash = strrchr(info->dlpi_name, '/');
        if (!slash || strncmp(slash + 1, "libpq.so", 8) != 0)
                return 0;
        snprintf(f->path, sizeof(f->path), "%s", info->dlpi_name);
        f->base = info->dlpi_addr;
        return 1;
}

/* Fills *out with the definitions in the loaded libpq's symbol table.
 * 0, or -1 with a message. */
static int direct_api(struct api *out)
{
        struct found f = {{0}, 0};
        if (!dl_iterate_phdr(find_libpq, &f)) {
                fprintf(stderr, "pair_bench: libpq is not loaded\n");
                return -1;
        }
        int fd = open(f.path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
                perror(f.path);
                return -1;
        }
        const unsigned char *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (m == MAP_FAILED) {
                perror("mmap");
                return -1;
        }
        const ElfW(Ehdr) *eh = (const void *)m;
        const ElfW(Shdr) *sh = (const void *)(m + eh->e_shoff);
        void **slot = (void **)out;
        size_t got = 0;
        for (int i = 0; i < eh->e_shnum; i++) {
                if (sh[i].sh_type != SHT_DYNSYM)
                        continue;
                const ElfW(Sym) *sym = (const void *)(m + sh[i].sh_offset);
                const char *str = (const char *)(m + sh[sh[i].sh_link].sh_offset);
                for (size_t k = 0; k < sh[i].sh_size / sizeof(*sym); k++) {
                        if (sym[k].st_shndx == SHN_UNDEF ||
                            ELF64_ST_TYPE(sym[k].st_info) != STT_FUNC)
                                continue;
                        for (size_t j = 0; j < API_N; j++)
                                if (!slot[j] && strcmp(str + sym[k].st_name, api_names[j]) == 0) {
                                        slot[j] = (void *)(f.base + sym[k].st_value);
                                        got++;
                                }
                }
        }
        munmap((void *)m, (size_t)st.st_size);
        if (got != API_N) {
                fprintf(stderr, "pair_bench: %s lacks some of the functions used\n", f.path);
                return -1;
        }
        return 0;
}

/* ---- one transaction ---- */

static int prepared, connecting;

/* One connect → SELECT 1 → finish cycle through a; its time in ns, or -1. */
static long long cycle(const struct api *a)
{
        long long t0 = now_ns();
        PGconn *c = a->connectdb("");
        int ok = a->status(c) == CONNECTION_OK;
        if (ok) {
                PGresult *r = a->exec(c, "SELECT 1");
                ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
                PQclear(r);
        }
        if (!ok)
                fprintf(stderr, "pair_bench: a connect cycle failed: %s", PQerrorMessage(c));
        a->finish(c);
        return ok ? now_ns() - t0 : -1;
}

/* One pgbench -S transaction through a; its time in ns, or -1. */
static long long transaction(const struct api *a, PGconn *c, unsigned *seed)
{
        if (connecting)
                return cycle(a);
        char sql[128], aid[16];
        *seed = *seed * 1103515245u + 12345u;
        int n = 1 + (int)((*seed >> 8) % 100000);
        long long t0 = now_ns();
        int sent;
        if (prepared) {
                snprintf(aid, sizeof(aid), "%d", n);
                const char *vals[1] = {aid};
                sent = a->send_prepared(c, "P0_0", 1, vals, NULL, NULL, 0);
        } else {
                snprintf(sql, sizeof(sql), "SELECT abalance FROM pgbench_accounts WHERE aid = %d;",
                         n);
                sent = a->send(c, sql);
        }
        if (!sent)
                return -1;
        for (;;) {
                struct pollfd p = {a->socket(c), POLLIN, 0};
                if (poll(&p, 1, -1) < 0 || !a->consume(c))
                        return -1;
                if (!a->is_busy(c))
                        break;
        }
        PGresult *r = a->result(c);
        int ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
        PQclear(r);
        if (!ok || (r = a->result(c)) != NULL || a->tx_status(c) != PQTRANS_IDLE) {
                PQclear(r);
                return -1;
        }
        return now_ns() - t0;
}

/* ---- statistics ---- */

static int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;
        return (x > y) - (x < y);
}

static double median(double *v, int n)
{
        qsort(v, (size_t)n, sizeof(*v), cmp_double);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static struct api via, direct;
static int blocks;
static long per;
static pthread_barrier_t start;

struct client {
        PGconn *conn;
        unsigned seed;
        double *t; /* [block][2]: via, direct ns */
        int failed;
};

/* A client: a warm-up, then every block's transactions, alternating the
 * two tables (the order swapped every block). */
static void *client_run(void *arg)
{
        struct client *cl = arg;
        const struct api *tables[2] = {&via, &direct};
        for (long i = 0; i < per && !cl->failed; i++)
                cl->failed = transaction(&via, cl->conn, &cl->seed) < 0 ||
                             transaction(&direct, cl->conn, &cl->seed) < 0;
        pthread_barrier_wait(&start);
        for (int b = 0; b < blocks && !cl->failed; b++)
                for (long i = 0; i < per && !cl->failed; i++)
                        for (int k = 0; k < 2; k++) {
                                int which = (k + b) % 2;
                                long long ns = transaction(tables[which], cl->conn, &cl->seed);
                                if (ns < 0) {
                                        cl->failed = 1;
                                        break;
                                }
                                cl->t[b * 2 + which] += (double)ns;
                        }
        return NULL;
}

static PGconn *open_conn(void)
{
        if (connecting)
                return (PGconn *)&connecting; /* none: every cycle opens its own */
        PGconn *c = PQconnectdb("");
        if (PQstatus(c) != CONNECTION_OK) {
                fprintf(stderr, "pair_bench: connect: %s", PQerrorMessage(c));
                PQfinish(c);
                return NULL;
        }
        if (prepared) {
                PGresult *r = PQprepare(
                    c, "P0_0", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", 1, NULL);
                int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
                PQclear(r);
                if (!ok) {
                        fprintf(stderr, "pair_bench: prepare: %s", PQerrorMessage(c));
                        PQfinish(c);
                        return NULL;
                }
        }
        return c;
}

int main(int argc, char **argv)
{
        prepared = (argc == 4 || argc == 5) && strcmp(argv[1], "prepared") == 0;
        connecting = (argc == 4 || argc == 5) && strcmp(argv[1], "connect") == 0;
        blocks = argc >= 4 ? atoi(argv[2]) : 0;
        per = argc >= 4 ? atol(argv[3]) : 0;
        int clients = argc == 5 ? atoi(argv[4]) : 1;
        if ((argc != 4 && argc != 5) ||
            (!prepared && !connecting && strcmp(argv[1], "simple") != 0) || blocks < 2 || per < 1 ||
            clients < 1 || clients > 64) {
                fprintf(stderr,
                        "usage: %s simple|prepared|connect BLOCKS(>=2) TRANSACTIONS_PER_BLOCK "
                        "[CLIENTS]\n",
                        argv[0]);
                return 2;
        }
        via = (struct api){PQsendQuery, PQsendQueryPrepared, PQsocket,    PQconsumeInput, PQisBusy,
                           PQgetResult, PQtransactionStatus, PQconnectdb, PQexec,         PQfinish,
                           PQstatus};
        if (direct_api(&direct) != 0)
                return 1;
        struct client *cl = calloc((size_t)clients, sizeof(*cl));
        pthread_t *th = calloc((size_t)clients, sizeof(*th));
        double *ratio = calloc((size_t)blocks, sizeof(double));
        if (!cl || !th || !ratio)
                return 1;
        int rc = 1;
        for (int i = 0; i < clients; i++) {
                cl[i].seed = 12345u + 7919u * (unsigned)i;
                if (!(cl[i].t = calloc((size_t)blocks * 2, sizeof(double))) ||
                    !(cl[i].conn = open_conn()))
                        goto out;
        }
        pthread_barrier_init(&start, NULL, (unsigned)clients);
        for (int i = 0; i < clients; i++)
                if (pthread_create(&th[i], NULL, client_run, &cl[i]) != 0) {
                        fprintf(stderr, "pair_bench: cannot start a thread\n");
                        exit(1); /* the others wait at the barrier */
                }
        for (int i = 0; i < clients; i++)
                pthread_join(th[i], NULL);
        double sum[2] = {0, 0};
        for (int b = 0; b < blocks; b++) {
                double t[2] = {0, 0};
                for (int i = 0; i < clients; i++) {
                        if (cl[i].failed) {
                                fprintf(stderr, "pair_bench: a transaction failed: %s",
                                        connecting ? "\n" : PQerrorMessage(cl[i].conn));
                                goto out;
                        }
                        t[0] += cl[i].t[b * 2];
                        t[1] += cl[i].t[b * 2 + 1];
                }
                ratio[b] = t[1] / t[0];
                sum[0] += t[0];
                sum[1] += t[1];
        }
        /* bootstrap of the median of the block ratios */
        enum { RESAMPLES = 2000 };
        double *meds = calloc(RESAMPLES, sizeof(double));
        double *pick = calloc((size_t)blocks, sizeof(double));
        if (!meds || !pick)
                goto out;
        unsigned r = 0x9e3779b9u;
        for (int s = 0; s < RESAMPLES; s++) {
                for (int b = 0; b < blocks; b++) {
                        r = r * 1664525u + 1013904223u;
                        pick[b] = ratio[(r >> 8) % (unsigned)blocks];
                }
                meds[s] = median(pick, blocks);
        }
        qsort(meds, RESAMPLES, sizeof(double), cmp_double);
        double n = (double)blocks * (double)per * clients;
        printf("ratio=%.4f lo=%.4f hi=%.4f via_us=%.3f direct_us=%.3f diff_ns=%.0f blocks=%d "
               "clients=%d\n",
               median(ratio, blocks), meds[RESAMPLES * 25 / 1000], meds[RESAMPLES * 975 / 1000],
               sum[0] / n / 1e3, sum[1] / n / 1e3, (sum[0] - sum[1]) / n, blocks, clients);
        free(meds);
        free(pick);
        rc = 0;
out:
        for (int i = 0; i < clients; i++) {
                if (!connecting)
                        PQfinish(cl[i].conn);
                free(cl[i].t);
        }
        free(cl);
        free(th);
        free(ratio);
        return rc;
}
