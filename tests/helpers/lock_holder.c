/* lock_holder.c - dies holding the segment's lock, for the chaos test.
 *
 *   lock_holder SEGMENT plain      registers (tries for a slot without
 *       waiting), takes the segment's lock, prints "locked" and waits to
 *       be killed.
 *   lock_holder SEGMENT scribble   the same, but first makes the pool's
 *       counters disagree with the lease table (as a process that dies in
 *       the middle of an update leaves them): the next locker must rebuild
 *       them from the lease table.
 * Exits 1 if it cannot attach or lock. */
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "dynshim/coord.h"
#include "dynshim/segment.h"

int main(int argc, char **argv)
{
        if (argc != 3)
                return 2;
        ds_handle *h = NULL;
        if (ds_attach(argv[1], 0, &h, NULL, 0) || ds_set_scraper(h, "lock_holder"))
                return 1;
        struct ds_lease_ref l;
        (void)ds_acquire(h, 1, &l, NULL, 0); /* registered, maybe with a slot */
        if (ds_lock(h))
                return 1;
        if (strcmp(argv[2], "scribble") == 0) {
                struct ds_header *H = ds_handle_header(h);
                H->held += 3;
                H->waiting += 2;
                H->draining += 1;
        }
        if (write(1, "locked\n", 7) != 7)
                return 1;
        for (;;)
                pause();
}
