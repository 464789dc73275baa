/* it_segment.c - creates, inspects and destroys a pool segment for the
 * integration tests when no dyncoord is at hand; its JSON carries the keys
 * of `dyncoord --stats --json`.
 *
 *   it_segment init NAME [key=value...]   (force-recreates the segment)
 *   it_segment stats NAME                 (one JSON object on stdout)
 *   it_segment destroy NAME
 *   it_segment drain NAME PID             (a slot of a process that died while
 *       its backend PID ran on a server of another host: DRAINING)
 * Exit status: 0 success, 1 failure, 2 usage. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dynshim/coord.h"
#include "dynshim/segment.h"

static int usage(void)
{
        fprintf(stderr, "usage: it_segment init NAME [key=value...] | stats NAME | destroy NAME\n");
        return 2;
}

static int do_init(const char *name, int argc, char **argv)
{
        struct ds_config cfg;
        struct ds_capacity cap;
        struct ds_create_opts opts = {.mode = 0600, .group = (gid_t)-1, .force = 1};
        char err[256] = "";

        ds_config_defaults(&cfg);
        ds_capacity_defaults(&cap);
        for (int i = 0; i < argc; i++) {
                if (ds_config_set_kv(&cfg, argv[i], err, sizeof(err)) != 0) {
                        fprintf(stderr, "it_segment: %s\n", err);
                        return 2;
                }
        }
        int rc = ds_segment_create(name, &cfg, &cap, &opts, err, sizeof(err));
        if (rc != 0) {
                fprintf(stderr, "it_segment: could not create segment '%s': %s\n", name,
                        err[0] ? err : strerror(-rc));
                return 1;
        }
        return 0;
}

static int do_stats(const char *name)
{
        ds_handle *h = NULL;
        struct ds_stats st;
        char err[256] = "";

        int rc = ds_attach(name, 0, &h, err, sizeof(err));
        if (rc != 0) {
                fprintf(stderr, "it_segment: could not attach to segment '%s': %s\n", name,
                        err[0] ? err : strerror(-rc));
                return 1;
        }
        rc = ds_stats_get(h, &st);
        if (rc != 0) {
                fprintf(stderr, "it_segment: could not read the stats of '%s': %s\n", name,
                        strerror(-rc));
                ds_detach(h);
                return 1;
        }
        printf("{\"pool_size\": %" PRIu32 ", \"held\": %" PRIu32 ", \"draining\": %" PRIu32
               ", \"waiting\": %" PRIu32 ", \"peak_held\": %" PRIu64 ", \"grants\": %" PRIu64
               ", \"scrapers\": [",
               st.cfg.pool_size, st.held, st.draining, st.waiting, st.peak_held, st.grants);
        for (size_t i = 0; i < st.n_scrapers; i++) {
                const struct ds_scraper_stats *s = &st.scrapers[i];
                printf("%s{\"name\": \"", i ? ", " : "");
                for (const char *c = s->name; *c; c++) {
                        if (*c == '"' || *c == '\\')
                                putchar('\\');
                        putchar(*c);
                }
                printf("\", \"state\": \"%s\", \"held\": %" PRIu32 ", \"limit\": %" PRIu32
                       ", \"waiting\": %" PRIu32 ", \"connects\": %" PRIu64
                       ", \"releases\": %" PRIu64 ", \"timeouts\": %" PRIu64
                       ", \"idle_releases\": %" PRIu64 ", \"reclaimed\": %" PRIu64
                       ", \"waits\": %" PRIu64 "}",
                       s->active ? "active" : "idle", s->held, s->limit, s->waiting, s->connects,
                       s->releases, s->timeouts, s->idle_releases, s->reclaimed, s->waits);
        }
        printf("]}\n");
        ds_stats_free(&st);
        ds_detach(h);
        return 0;
}

/* A child takes a slot, records pid as its backend, marks it remote (as a
 * server on another host would be: the PID says nothing here) and dies. */
static int do_drain(const char *name, const char *pid_text)
{
        int32_t pid = (int32_t)atoi(pid_text);
        pid_t child = fork();
        if (child == 0) {
                ds_handle *h = NULL;
                struct ds_lease_ref l;
                if (ds_attach(name, 0, &h, NULL, 0) || ds_set_scraper(h, "remote_client") ||
                    ds_acquire(h, 5000, &l, NULL, 0) || ds_lease_set_backend(h, &l, pid))
                        _exit(1);
                struct ds_header *H = ds_handle_header(h);
                struct ds_lease *leases =
                    (struct ds_lease *)((char *)H + ds_layout_leases_off(&H->cap));
                atomic_store(&leases[l.idx].backend_start, 0);
                _exit(0); /* dies holding the slot */
        }
        int status = 0;
        if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0) {
                fprintf(stderr, "it_segment: the draining client failed\n");
                return 1;
        }
        ds_handle *h = NULL;
        if (ds_attach(name, 0, &h, NULL, 0))
                return 1;
        int n = ds_reclaim(h);
        ds_detach(h);
        return n == 1 ? 0 : 1;
}

int main(int argc, char **argv)
{
        if (argc < 3)
                return usage();
        if (strcmp(argv[1], "init") == 0)
                return do_init(argv[2], argc - 3, argv + 3);
        if (argc == 4 && strcmp(argv[1], "drain") == 0)
                return do_drain(argv[2], argv[3]);
        if (argc != 3)
                return usage();
        if (strcmp(argv[1], "stats") == 0)
                return do_stats(argv[2]);
        if (strcmp(argv[1], "destroy") == 0) {
                char err[256] = "";
                int rc = ds_segment_destroy(argv[2], err, sizeof(err));
                if (rc != 0 && rc != -ENOENT) {
                        fprintf(stderr, "it_segment: could not destroy '%s': %s\n", argv[2],
                                err[0] ? err : strerror(-rc));
                        return 1;
                }
                return 0;
        }
        return usage();
}
