/* segment.c - creating, validating, attaching and destroying the segment. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ERR(...) (err ? (void)snprintf(err, errlen, __VA_ARGS__) : (void)0)

static size_t align_up(size_t v)
{
        return (v + DS_ALIGN - 1) & ~(size_t)(DS_ALIGN - 1);
}

size_t ds_layout_procs_off(void)
{
        return align_up(sizeof(struct ds_header));
}

size_t ds_layout_leases_off(const struct ds_capacity *cap)
{
        return align_up(ds_layout_procs_off() + (size_t)cap->max_procs * sizeof(struct ds_proc));
}

size_t ds_layout_scrapers_off(const struct ds_capacity *cap)
{
        return align_up(ds_layout_leases_off(cap) +
                        (size_t)cap->max_leases * sizeof(struct ds_lease));
}

size_t ds_layout_size(const struct ds_capacity *cap)
{
        return align_up(ds_layout_scrapers_off(cap) +
                        (size_t)cap->max_scrapers * sizeof(struct ds_scraper));
}

const char *ds_segment_name(const char *name)
{
        if (name && *name)
                return name;
        const char *env = secure_getenv("DYNSHIM_SEGMENT");
        return env && *env ? env : DS_DEFAULT_SEGMENT;
}

int ds_mutex_init_shared(pthread_mutex_t *m)
{
        pthread_mutexattr_t a;
        int rc = pthread_mutexattr_init(&a);
        if (rc)
                return -rc;
        rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        if (!rc)
                rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        if (!rc)
                rc = pthread_mutex_init(m, &a);
        pthread_mutexattr_destroy(&a);
        return -rc;
}

int ds_expected_mutex_kind(void)
{
        static int kind = -1;
        if (kind < 0) {
                pthread_mutex_t m;
                if (ds_mutex_init_shared(&m) == 0) {
                        kind = m.__data.__kind;
                        pthread_mutex_destroy(&m);
                }
        }
        return kind;
}

void ds_pidns_identity(uint64_t *dev, uint64_t *ino)
{
        struct stat st;
        if (stat("/proc/self/ns/pid", &st) == 0) {
                *dev = (uint64_t)st.st_dev;
                *ino = (uint64_t)st.st_ino;
        } else {
                *dev = 0;
                *ino = 0;
        }
}

static int valid_name(const char *name, char *err, size_t errlen)
{
        size_t n = strlen(name);
        if (name[0] != '/' || n < 2 || n > 250 || strchr(name + 1, '/')) {
                ERR("segment name '%s' is invalid: it must be '/' followed by 1 to 249 characters "
                    "without '/'",
                    name);
                return -EINVAL;
        }
        return 0;
}

/* Marks a mapped segment destroyed, if it looks like ours. */
static void mark_destroyed(const char *name)
{
        int fd = shm_open(name, O_RDWR, 0);
        if (fd < 0)
                return;
        struct stat st;
        if (fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(struct ds_header)) {
                struct ds_header *h =
                    mmap(NULL, sizeof(*h), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                if (h != MAP_FAILED) {
                        if (h->magic == DS_MAGIC)
                                atomic_store(&h->destroyed, 1);
                        munmap(h, sizeof(*h));
                }
        }
        close(fd);
}

int ds_segment_destroy(const char *name, char *err, size_t errlen)
{
        name = ds_segment_name(name);
        int rc = valid_name(name, err, errlen);
        if (rc)
                return rc;
        mark_destroyed(name);
        if (shm_unlink(name) != 0) {
                rc = -errno;
                if (rc == -ENOENT)
                        ERR("segment %s does not exist", name);
                else
                        ERR("could not remove segment %s: %s", name, strerror(-rc));
                return rc;
        }
        return 0;
}

int ds_segment_create(const char *name, const struct ds_config *cfg, const struct ds_capacity *cap,
                      const struct ds_create_opts *opts, char *err, size_t errlen)
{
        char why[200];
        int rc;
        name = ds_segment_name(name);
        if ((rc = valid_name(name, err, errlen)))
                return rc;
        if ((rc = ds_capacity_validate(cap, why, sizeof(why))) ||
            (rc = ds_config_validate(cfg, cap, why, sizeof(why)))) {
                ERR("%s", why);
                return rc;
        }
        mode_t mode = opts && opts->mode ? opts->mode & 0777 : 0600;
        /* With force, a client may recreate a default segment between our
         * unlink and our create: unlink again, a few times. */
        int fd = -1;
        for (int tries = 0; tries < 5; tries++) {
                if (opts && opts->force)
                        ds_segment_destroy(name, NULL, 0);
                fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
                if (fd >= 0 || errno != EEXIST || !(opts && opts->force))
                        break;
        }
        if (fd < 0) {
                rc = -errno;
                if (rc == -EEXIST)
                        ERR("segment %s already exists (use --force to recreate it)", name);
                else
                        ERR("could not create segment %s: %s", name, strerror(-rc));
                return rc;
        }
        size_t size = ds_layout_size(cap);
        void *map = MAP_FAILED;
        if (opts && opts->group != (gid_t)-1 && fchown(fd, (uid_t)-1, opts->group) != 0) {
                rc = -errno;
                ERR("could not give segment %s to group %u: %s", name, (unsigned)opts->group,
                    strerror(-rc));
                goto fail;
        }
        if (fchmod(fd, mode) != 0 || ftruncate(fd, (off_t)size) != 0) {
                rc = -errno;
                ERR("could not size segment %s: %s", name, strerror(-rc));
                goto fail;
        }
        map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
                rc = -errno;
                ERR("could not map segment %s: %s", name, strerror(-rc));
                goto fail;
        }
        /* ftruncate zero-filled it; initialise, then publish the magic last. */
        struct ds_header *h = map;
        h->layout_version = DS_LAYOUT_VERSION;
        h->header_size = sizeof(struct ds_header);
        h->proc_size = sizeof(struct ds_proc);
        h->lease_size = sizeof(struct ds_lease);
        h->scraper_size = sizeof(struct ds_scraper);
        h->mutex_size = sizeof(pthread_mutex_t);
        h->mutex_align = _Alignof(pthread_mutex_t);
        h->word_size = sizeof(void *);
        h->cap = *cap;
        h->creator_uid = (uint32_t)geteuid();
        h->total_size = size;
        ds_pidns_identity(&h->pidns_dev, &h->pidns_ino);
        if (getrandom(&h->generation, sizeof(h->generation), GRND_NONBLOCK) !=
            sizeof(h->generation))
                h->generation = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        h->created_realtime_s = (uint64_t)time(NULL);
        h->cfg = *cfg;
        h->next_lease_id = 1;
        h->next_ticket = 1;
        if ((rc = ds_mutex_init_shared(&h->lock)))
                goto fail_init;
        struct ds_proc *procs = (struct ds_proc *)((char *)map + ds_layout_procs_off());
        for (uint32_t i = 0; i < cap->max_procs; i++)
                if ((rc = ds_mutex_init_shared(&procs[i].life)))
                        goto fail_init;
        atomic_thread_fence(memory_order_release);
        __atomic_store_n(&h->magic, DS_MAGIC, __ATOMIC_RELEASE);
        munmap(map, size);
        close(fd);
        return 0;
fail_init:
        ERR("could not initialise the locks of segment %s: %s", name, strerror(-rc));
fail:
        if (map != MAP_FAILED)
                munmap(map, size);
        close(fd);
        shm_unlink(name);
        return rc;
}

int ds_segment_validate(const void *buf, size_t size, const char *name, char *err, size_t errlen)
{
        const struct ds_header *h = buf;
        if (size < sizeof(struct ds_header)) {
                ERR("segment %s is %zu bytes, too small for a header", name, size);
                return -EPROTO;
        }
        uint64_t magic = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE);
#define CHECK(cond, ...)                                                                           \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        ERR(__VA_ARGS__);                                                          \
                        return -EPROTO;                                                            \
                }                                                                                  \
        } while (0)
        CHECK(magic == DS_MAGIC, "segment %s has bad magic 0x%016llx (expected 0x%016llx)", name,
              (unsigned long long)magic, (unsigned long long)DS_MAGIC);
        CHECK(h->layout_version == DS_LAYOUT_VERSION,
              "segment %s has layout version %u, this build uses %u", name, h->layout_version,
              DS_LAYOUT_VERSION);
        CHECK(h->header_size == sizeof(struct ds_header),
              "segment %s has a header of %u bytes, expected %zu", name, h->header_size,
              sizeof(struct ds_header));
        CHECK(h->proc_size == sizeof(struct ds_proc) && h->lease_size == sizeof(struct ds_lease) &&
                  h->scraper_size == sizeof(struct ds_scraper),
              "segment %s has records of %u/%u/%u bytes, expected %zu/%zu/%zu", name, h->proc_size,
              h->lease_size, h->scraper_size, sizeof(struct ds_proc), sizeof(struct ds_lease),
              sizeof(struct ds_scraper));
        CHECK(
            h->mutex_size == sizeof(pthread_mutex_t) && h->mutex_align == _Alignof(pthread_mutex_t),
            "segment %s was made with a lock type of size %u/alignment %u, expected %zu/%zu", name,
            h->mutex_size, h->mutex_align, sizeof(pthread_mutex_t), _Alignof(pthread_mutex_t));
        CHECK(h->word_size == sizeof(void *), "segment %s has word size %u, expected %zu", name,
              h->word_size, sizeof(void *));
        char why[160];
        struct ds_capacity cap = h->cap;
        CHECK(ds_capacity_validate(&cap, why, sizeof(why)) == 0, "segment %s: %s", name, why);
        size_t want = ds_layout_size(&cap);
        CHECK(h->total_size == want && size == want,
              "segment %s is %zu bytes and says %llu, but its capacity needs %zu", name, size,
              (unsigned long long)h->total_size, want);
        CHECK(h->lock.__data.__kind == ds_expected_mutex_kind(),
              "segment %s has a corrupt lock (kind %d)", name, h->lock.__data.__kind);
        struct ds_config cfg = h->cfg;
        CHECK(ds_config_validate(&cfg, &cap, why, sizeof(why)) == 0,
              "segment %s has an invalid configuration: %s", name, why);
        CHECK(h->lease_hwm <= cap.max_leases && h->proc_hwm <= cap.max_procs &&
                  h->scraper_hwm <= cap.max_scrapers,
              "segment %s has table bounds out of range (%u/%u/%u)", name, h->lease_hwm,
              h->proc_hwm, h->scraper_hwm);
#undef CHECK
        uint64_t dev, ino;
        ds_pidns_identity(&dev, &ino);
        if ((h->pidns_ino || h->pidns_dev) && (ino || dev) &&
            (dev != h->pidns_dev || ino != h->pidns_ino)) {
                ERR("segment %s belongs to another PID namespace (pid:[%llu], this process is in "
                    "pid:[%llu]); robust locks cannot work across PID namespaces: give each "
                    "namespace its own segment (DYNSHIM_SEGMENT)",
                    name, (unsigned long long)h->pidns_ino, (unsigned long long)ino);
                return -EXDEV;
        }
        return 0;
}

/* Whether a segment owned by another user was shared on purpose with a
 * group this process is in (dyncoord --mode 0660 --group G): the group may
 * read and write it, and others may not touch it. A segment open to everyone
 * ("other" bits) is not that: anyone could have created it. */
static int shared_with_my_group(const struct stat *st)
{
        if ((st->st_mode & 0060) != 0060 || (st->st_mode & 0007) != 0)
                return 0;
        if (st->st_gid == getegid())
                return 1;
        int n = getgroups(0, NULL), found = 0;
        gid_t *groups = n > 0 ? calloc((size_t)n, sizeof(gid_t)) : NULL;
        if (groups)
                n = getgroups(n, groups);
        for (int i = 0; groups && i < n && !found; i++)
                found = groups[i] == st->st_gid;
        free(groups);
        return found;
}

/* Maps and validates an existing segment into h. */
static int attach_existing(ds_handle *h, const char *name, char *err, size_t errlen)
{
        int fd = shm_open(name, O_RDWR, 0);
        if (fd < 0) {
                int rc = -errno;
                if (rc == -ENOENT)
                        ERR("segment %s does not exist (create it with dyncoord --init)", name);
                else if (rc == -EACCES)
                        ERR("segment %s is not accessible to uid %u: %s", name, (unsigned)geteuid(),
                            strerror(-rc));
                else
                        ERR("could not open segment %s: %s", name, strerror(-rc));
                return rc;
        }
        struct stat st;
        int rc = 0;
        /* A creator publishes the magic last; give a concurrent one a moment. */
        for (int tries = 0;; tries++) {
                if (fstat(fd, &st) != 0) {
                        rc = -errno;
                        ERR("could not stat segment %s: %s", name, strerror(-rc));
                        goto out;
                }
                if (st.st_uid != geteuid() && st.st_uid != 0 && !shared_with_my_group(&st)) {
                        ERR("segment %s is owned by uid %u, not by this user (uid %u) or root, "
                            "and is not shared read-write with a group of this user: refusing "
                            "to use it",
                            name, (unsigned)st.st_uid, (unsigned)geteuid());
                        rc = -EACCES;
                        goto out;
                }
                if ((size_t)st.st_size >= sizeof(struct ds_header)) {
                        struct ds_header *peek =
                            mmap(NULL, sizeof(*peek), PROT_READ, MAP_SHARED, fd, 0);
                        if (peek == MAP_FAILED) {
                                rc = -errno;
                                ERR("could not map segment %s: %s", name, strerror(-rc));
                                goto out;
                        }
                        uint64_t magic = __atomic_load_n(&peek->magic, __ATOMIC_ACQUIRE);
                        munmap(peek, sizeof(*peek));
                        if (magic != 0)
                                break;
                }
                if (tries >= 200) {
                        if ((size_t)st.st_size < sizeof(struct ds_header))
                                ERR("segment %s is %lld bytes, too small for a header", name,
                                    (long long)st.st_size);
                        else
                                ERR("segment %s was never initialised (magic is 0)", name);
                        rc = -EPROTO;
                        goto out;
                }
                struct timespec ts = {0, 5 * 1000 * 1000};
                nanosleep(&ts, NULL);
        }
        h->size = (size_t)st.st_size;
        h->map = mmap(NULL, h->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (h->map == MAP_FAILED) {
                rc = -errno;
                h->map = NULL;
                ERR("could not map segment %s: %s", name, strerror(-rc));
                goto out;
        }
        h->hdr = h->map;
        rc = ds_segment_validate(h->hdr, h->size, name, err, errlen);
        if (rc) {
                munmap(h->map, h->size);
                h->map = NULL;
                goto out;
        }
        h->cap = h->hdr->cap;
        h->procs = (struct ds_proc *)((char *)h->map + ds_layout_procs_off());
        h->leases = (struct ds_lease *)((char *)h->map + ds_layout_leases_off(&h->cap));
        h->scrapers = (struct ds_scraper *)((char *)h->map + ds_layout_scrapers_off(&h->cap));
        h->mutex_kind = ds_expected_mutex_kind();
out:
        close(fd);
        return rc;
}

int ds_attach(const char *name, unsigned flags, ds_handle **out, char *err, size_t errlen)
{
        int rc;
        name = ds_segment_name(name);
        if ((rc = valid_name(name, err, errlen)))
                return rc;
        ds_handle *h = calloc(1, sizeof(*h));
        if (!h) {
                ERR("out of memory");
                return -ENOMEM;
        }
        snprintf(h->name, sizeof(h->name), "%s", name);
        pthread_mutex_init(&h->local, NULL);
        rc = attach_existing(h, name, err, errlen);
        if (rc == -ENOENT && (flags & DS_ATTACH_CREATE)) {
                struct ds_config cfg;
                struct ds_capacity cap;
                ds_config_defaults(&cfg);
                ds_capacity_defaults(&cap);
                struct ds_create_opts o = {.mode = 0600, .group = (gid_t)-1, .force = 0};
                rc = ds_segment_create(name, &cfg, &cap, &o, err, errlen);
                if (rc == 0 || rc == -EEXIST) /* lost a race with another creator: fine */
                        rc = attach_existing(h, name, err, errlen);
        }
        if (rc == 0) {
                /* the policy's scratch: one block, freed with the handle */
                size_t ns = h->cap.max_scrapers, np = h->cap.max_procs;
                char *b = calloc(1, ns * sizeof(*h->pick) + np * sizeof(*h->wproc) +
                                        ns * sizeof(*h->reserve));
                if (!b) {
                        munmap(h->map, h->size);
                        ERR("out of memory");
                        rc = -ENOMEM;
                } else {
                        h->pick = (struct ds_pick_entry *)b;
                        h->wproc = (struct ds_wait_proc *)(b + ns * sizeof(*h->pick));
                        h->reserve =
                            (uint32_t *)(b + ns * sizeof(*h->pick) + np * sizeof(*h->wproc));
                }
        }
        if (rc) {
                pthread_mutex_destroy(&h->local);
                free(h);
                return rc;
        }
        *out = h;
        return 0;
}

struct ds_header *ds_handle_header(ds_handle *h)
{
        return h->hdr;
}
