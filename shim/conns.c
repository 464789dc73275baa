/* conns.c - the per-process table PGconn* -> what the shim knows about it
 * (owning library, lease, owner pid, open parameters). A static hash of
 * chains under one mutex: nothing is allocated before the first connect. */
#include "shim.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#define DS_CONN_BUCKETS 1024

static pthread_mutex_t conns_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct ds_conn *buckets[DS_CONN_BUCKETS];

static size_t bucket_of(const void *conn)
{
        uintptr_t v = (uintptr_t)conn;
        v ^= v >> 17;
        v *= 0x9e3779b97f4a7c15ull;
        return (size_t)(v >> 40) % DS_CONN_BUCKETS;
}

void ds_conns_lock(void)
{
        pthread_mutex_lock(&conns_mutex);
}

void ds_conns_unlock(void)
{
        pthread_mutex_unlock(&conns_mutex);
}

int ds_conn_add(struct ds_conn *c)
{
        size_t b = bucket_of(c->conn);
        pthread_mutex_lock(&conns_mutex);
        c->next = buckets[b];
        buckets[b] = c;
        pthread_mutex_unlock(&conns_mutex);
        return 0;
}

struct ds_conn *ds_conn_find(const void *conn)
{
        if (!conn)
                return NULL;
        size_t b = bucket_of(conn);
        pthread_mutex_lock(&conns_mutex);
        struct ds_conn *c = buckets[b];
        while (c && c->conn != conn)
                c = c->next;
        pthread_mutex_unlock(&conns_mutex);
        return c;
}

struct ds_conn *ds_conn_remove(const void *conn)
{
        if (!conn)
                return NULL;
        size_t b = bucket_of(conn);
        pthread_mutex_lock(&conns_mutex);
        struct ds_conn **pp = &buckets[b];
        while (*pp && (*pp)->conn != conn)
                pp = &(*pp)->next;
        struct ds_conn *c = *pp;
        if (c)
                *pp = c->next;
        pthread_mutex_unlock(&conns_mutex);
        return c;
}

void ds_conn_free(struct ds_conn *c)
{
        if (!c)
                return;
        free(c->error);
        /* values[i] may be NULL: the keyword list is the terminator. */
        for (size_t i = 0; c->keywords && c->keywords[i]; i++) {
                free(c->keywords[i]);
                if (c->values)
                        free(c->values[i]);
        }
        free(c->keywords);
        free(c->values);
        free(c);
}

void ds_conns_each(void (*fn)(struct ds_conn *e, void *arg), void *arg)
{
        pthread_mutex_lock(&conns_mutex);
        for (size_t b = 0; b < DS_CONN_BUCKETS; b++)
                for (struct ds_conn *c = buckets[b]; c; c = c->next)
                        fn(c, arg);
        pthread_mutex_unlock(&conns_mutex);
}
