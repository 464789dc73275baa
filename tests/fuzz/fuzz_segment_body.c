/* fuzz_segment_body.c - the coordinator on a segment whose bytes are hostile.
 *
 * A valid segment is created once in /dev/shm (a name of this process) and
 * its fresh image kept. For each input the segment is reset to that image
 * and the input is written over it from offset 0, except the header's lock,
 * which only a process dying inside it can change: the input's bytes at the
 * lock select whether the lock is left as a dead holder left it (owner died,
 * so the next locker repairs the tables) or free. Then the whole life of a
 * client runs on it: attach, ds_check, ds_stats_get, ds_reclaim, a slot
 * taken without waiting and given back, detach. Nothing may crash, hang
 * (libFuzzer's -timeout) or trip a sanitizer; refusals are fine. */
#include <errno.h>
#include <linux/futex.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"

static char seg_name[64];
static void *seg;      /* the segment, mapped */
static void *pristine; /* its image right after creation */
static size_t seg_size;

static void remove_segment(void)
{
        ds_segment_destroy(seg_name, NULL, 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        (void)argc, (void)argv;
        struct ds_config cfg;
        struct ds_capacity cap;
        fz_body_shape(&cfg, &cap);
        snprintf(seg_name, sizeof(seg_name), "/dynshim-fuzz-body-%d", (int)getpid());
        struct ds_create_opts o = {.mode = 0600, .group = (gid_t)-1, .force = 1};
        char err[256];
        if (ds_segment_create(seg_name, &cfg, &cap, &o, err, sizeof(err)) != 0) {
                fprintf(stderr, "fuzz_segment_body: %s\n", err);
                exit(1);
        }
        atexit(remove_segment);
        seg = fz_map(seg_name, &seg_size);
        if (!seg || !(pristine = fz_portable_copy(seg, seg_size))) {
                fprintf(stderr, "fuzz_segment_body: could not map %s\n", seg_name);
                exit(1);
        }
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        const size_t lock_off = offsetof(struct ds_header, lock);
        const size_t lock_end = lock_off + sizeof(pthread_mutex_t);
        int owner_died = size > lock_off && (data[lock_off] & 1);

        memcpy(seg, pristine, seg_size);
        if (size > seg_size)
                size = seg_size;
        memcpy(seg, data, size < lock_off ? size : lock_off);
        if (size > lock_end)
                memcpy((char *)seg + lock_end, data + lock_end, size - lock_end);
        if (owner_died) {
                /* What the kernel leaves when the holder dies: the owner-died
                 * bit and a thread id that no longer exists (above pid_max). */
                struct ds_header *H = seg;
                __atomic_store_n(&H->lock.__data.__lock, FUTEX_OWNER_DIED | 0x3ffffffe,
                                 __ATOMIC_RELEASE);
        }

        /* A zero magic is a segment still being created: attach waits a
         * second for its creator before refusing it. fuzz_segment covers that
         * refusal; here it would only slow the fuzzer down. */
        if (((struct ds_header *)seg)->magic == 0)
                return 0;
        ds_handle *h = NULL;
        char err[512];
        if (ds_attach(seg_name, 0, &h, err, sizeof(err)) != 0)
                return 0;
        char why[512];
        (void)ds_check(h, why, sizeof(why));
        struct ds_stats st;
        if (ds_stats_get(h, &st) == 0) {
                for (size_t i = 0; i < st.n_scrapers; i++)
                        if (memchr(st.scrapers[i].name, 0, DS_NAME_MAX) == NULL)
                                abort(); /* a name handed out unterminated */
                ds_stats_free(&st);
        }
        (void)ds_reclaim(h);
        if (ds_set_scraper(h, "fuzz") == 0) {
                struct ds_lease_ref l;
                int rc;
                if (ds_acquire(h, 0, &l, why, sizeof(why)) == 0 && (rc = ds_release(h, &l)) != 0) {
                        fprintf(stderr, "a slot granted to us could not be given back: %s\n",
                                strerror(-rc));
                        abort();
                }
        }
        (void)ds_check(h, why, sizeof(why));
        ds_detach(h);
        return 0;
}
