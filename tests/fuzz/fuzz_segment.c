/* fuzz_segment.c - the segment validator on arbitrary segment images.
 *
 * The input is the whole mapping of a segment (header and tables). The
 * validator must never read outside it, and whatever it accepts must be a
 * segment that the rest of the coordinator can index safely: the format
 * signature of this build, a capacity within bounds whose layout is exactly
 * the mapping's size, a valid configuration and table bounds within the
 * capacity. An accepted image that breaks one of these aborts. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dynshim/coord.h"
#include "dynshim/segment.h"

static void require(int cond, const char *what)
{
        if (!cond) {
                fprintf(stderr, "accepted segment violates: %s\n", what);
                abort();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        /* An exact-size heap buffer (so ASan sees any read past it), aligned
         * like a mapping. */
        size_t alloc = (size + DS_ALIGN - 1) / DS_ALIGN * DS_ALIGN;
        void *buf = aligned_alloc(DS_ALIGN, alloc ? alloc : DS_ALIGN);
        if (!buf)
                return 0;
        memcpy(buf, data, size);
        char err[512];
        err[0] = '\0';
        int rc = ds_segment_validate(buf, size, "/fuzz", err, sizeof(err));
        if (rc != 0) {
                require(rc == -EPROTO || rc == -EXDEV, "an error other than -EPROTO/-EXDEV");
                require(err[0] != '\0', "a refusal without a reason");
                require(strstr(err, "/fuzz") != NULL, "a reason that does not name the segment");
        } else {
                const struct ds_header *h = buf;
                struct ds_capacity cap = h->cap;
                struct ds_config cfg = h->cfg;
                require(size >= sizeof(*h), "a mapping smaller than the header");
                require(h->magic == DS_MAGIC, "the magic");
                require(h->layout_version == DS_LAYOUT_VERSION, "the layout version");
                require(ds_capacity_validate(&cap, NULL, 0) == 0, "the capacity bounds");
                require(ds_layout_size(&cap) == size, "a layout of the mapping's size");
                require(h->total_size == size, "the recorded total size");
                require(ds_config_validate(&cfg, &cap, NULL, 0) == 0, "the configuration");
                require(cfg.pool_size <= cap.max_leases, "pool_size within the lease table");
                require(h->lease_hwm <= cap.max_leases && h->proc_hwm <= cap.max_procs &&
                            h->scraper_hwm <= cap.max_scrapers,
                        "the table bounds");
        }
        free(buf);
        return 0;
}
