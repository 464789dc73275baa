/* wrappers.c - the thin wrappers, generated from intercept.def: the exported
 * interposers (routed by caller or by connection) and one set of wrappers per
 * libpq copy (for dlsym(handle, ...) callers and patched GOT entries). They
 * only translate and forward; every decision is in shim.c. */
#include "shim.h"

#include <string.h>

#define DS_EXPORT            __attribute__((visibility("default")))
#define DS_RA                __builtin_return_address(0)
#define DS_FIRST_(a, ...)    a
#define DS_FIRST(args)       DS_FIRST_ args
#define DS_REAL(ret, params) ((ret(*) params)c.real)

/* A connect's arguments, kept by the call record for the connection table. */
#define DS_ARGS_PQconnectdb(ci)    c.args.conninfo = ci
#define DS_ARGS_PQconnectStart(ci) c.args.conninfo = ci
#define DS_ARGS_PQconnectdbParams(k, v, e)                                                         \
        (c.args.keywords = k, c.args.values = v, c.args.expand_dbname = e)
#define DS_ARGS_PQconnectStartParams DS_ARGS_PQconnectdbParams
#define DS_ARGS_PQsetdbLogin(h, p, o, t, d, u, w)                                                  \
        (c.args.setdb[0] = h, c.args.setdb[1] = p, c.args.setdb[2] = o, c.args.setdb[3] = t,       \
         c.args.setdb[4] = d, c.args.setdb[5] = u, c.args.setdb[6] = w)

/* One body per kind; `slot` is -1 for the exported interposers. */
#define DS_BODY_CONNECT(ret, name, params, args, slot)                                             \
        struct ds_call c;                                                                          \
        DS_ARGS_##name args;                                                                       \
        if (ds_begin(&c, DS_ID_##name, slot, DS_RA, NULL))                                         \
                c.out.conn = DS_REAL(ret, params) args;                                            \
        ds_end(&c);                                                                                \
        return c.out.conn;
#define DS_BODY_START DS_BODY_CONNECT
#define DS_BODY_POLL(ret, name, params, args, slot)                                                \
        struct ds_call c;                                                                          \
        if (ds_begin(&c, DS_ID_##name, slot, DS_RA, DS_FIRST(args)))                               \
                c.out.poll = DS_REAL(ret, params) args;                                            \
        ds_end(&c);                                                                                \
        return c.out.poll;
#define DS_BODY_RESET(ret, name, params, args, slot)                                               \
        struct ds_call c;                                                                          \
        if (ds_begin(&c, DS_ID_##name, slot, DS_RA, DS_FIRST(args)))                               \
                DS_REAL(ret, params) args;                                                         \
        ds_end(&c);
#define DS_BODY_FINISH DS_BODY_RESET
#define DS_BODY_RESET_START(ret, name, params, args, slot)                                         \
        struct ds_call c;                                                                          \
        if (ds_begin(&c, DS_ID_##name, slot, DS_RA, DS_FIRST(args)))                               \
                c.out.i = DS_REAL(ret, params) args;                                               \
        ds_end(&c);                                                                                \
        return c.out.i;
#define DS_BODY_PING(ret, name, params, args, slot)                                                \
        struct ds_call c;                                                                          \
        if (ds_begin(&c, DS_ID_##name, slot, DS_RA, NULL))                                         \
                c.out.ping = DS_REAL(ret, params) args;                                            \
        ds_end(&c);                                                                                \
        return c.out.ping;
/* The fast path of ACTIVITY and GETTER (ds_fast_enter): `pre` on the
 * entered record fe, the real function of the connection's library, then
 * `post` (with its result in fr); or libpq's own call passed through; else
 * the wrapper goes on to ds_begin. */
#define DS_FAST_PRE(ret, name, params, args, slot, pre, post)                                      \
        void *fi;                                                                                  \
        struct ds_conn *fe = ds_fast_enter(DS_ID_##name, slot, DS_RA, DS_FIRST(args), &fi);        \
        if (fe) {                                                                                  \
                pre;                                                                               \
                ret fr = ((ret(*) params)fe->lib->fn[DS_ID_##name])args;                           \
                post;                                                                              \
                return fr;                                                                         \
        }                                                                                          \
        if (fi)                                                                                    \
                return ((ret(*) params)fi)args;
#define DS_FAST(ret, name, params, args, slot, end)                                                \
        DS_FAST_PRE(ret, name, params, args, slot, (void)0, end(fe))
/* Whether an activity call's result may mean the connection broke (then
 * ds_fast_activity_end_suspect looks at its status): a call returning a
 * number fails with 0 or less (a few also succeed so: a look too many),
 * a PGresult-returning call may carry the error, except PQgetResult, whose
 * caller reads on to its NULL. */
static inline int ds_suspect_num(int id, long long v)
{
        (void)id;
        return v <= 0;
}
static inline int ds_suspect_result(int id, const PGresult *r)
{
        return id != DS_ID_PQgetResult || !r;
}
#define DS_SUSPECT(id, fr)                                                                         \
        _Generic((fr), PGresult * : ds_suspect_result, default : ds_suspect_num)(id, fr)
#define DS_ACTIVITY_END(name)                                                                      \
        if (DS_SUSPECT(DS_ID_##name, fr))                                                          \
                ds_fast_activity_end_suspect(fe);                                                  \
        else                                                                                       \
                ds_fast_activity_end(fe)
#define DS_BODY_ACTIVITY(ret, name, params, args, slot)                                            \
        DS_FAST_PRE(ret, name, params, args, slot, (void)0, DS_ACTIVITY_END(name))                 \
        struct ds_call c;                                                                          \
        ds_begin(&c, DS_ID_##name, slot, DS_RA, DS_FIRST(args));                                   \
        ret r = DS_REAL(ret, params) args;                                                         \
        ds_end(&c);                                                                                \
        return r;
/* ACTIVITY whose second argument is SQL text (ds_note_query). */
#define DS_SECOND_(a, b, ...) b
#define DS_SECOND(args)       DS_SECOND_ args
#define DS_BODY_QUERY(ret, name, params, args, slot)                                               \
        DS_FAST_PRE(ret, name, params, args, slot, ds_note_query(fe, DS_SECOND(args)),             \
                    DS_ACTIVITY_END(name))                                                         \
        struct ds_call c;                                                                          \
        ds_begin(&c, DS_ID_##name, slot, DS_RA, DS_FIRST(args));                                   \
        if (c.entry && !c.nested)                                                                  \
                ds_note_query(c.entry, DS_SECOND(args));                                           \
        ret r = DS_REAL(ret, params) args;                                                         \
        ds_end(&c);                                                                                \
        return r;
#define DS_BODY_ERRMSG(ret, name, params, args, slot)                                              \
        struct ds_call c;                                                                          \
        if (ds_begin(&c, DS_ID_##name, slot, DS_RA, DS_FIRST(args)))                               \
                c.out.str = DS_REAL(ret, params) args;                                             \
        ds_end(&c);                                                                                \
        return c.out.str;

#define DS_BODY_GETTER(ret, name, params, args, slot)                                              \
        DS_FAST(ret, name, params, args, slot, ds_fast_leave)                                      \
        struct ds_call c;                                                                          \
        ret r;                                                                                     \
        if (ds_begin(&c, DS_ID_##name, slot, DS_RA, DS_FIRST(args)))                               \
                r = DS_REAL(ret, params) args;                                                     \
        else                                                                                       \
                r = (ret)c.out.i;                                                                  \
        ds_end(&c);                                                                                \
        return r;
#define DS_BODY_REVIVE(ret, name, params, args, slot)                                              \
        struct ds_call c;                                                                          \
        ds_begin(&c, DS_ID_##name, slot, DS_RA, DS_FIRST(args));                                   \
        ret r = DS_REAL(ret, params) args;                                                         \
        ds_end(&c);                                                                                \
        return r;

/* PQbackendPID: on an open connection as cheap as a getter, and the
 * connection is pinned (ds_fast_pid_leave); else as REVIVE (ds_end pins). */
#define DS_BODY_PID(ret, name, params, args, slot)                                                 \
        DS_FAST(ret, name, params, args, slot, ds_fast_pid_leave)                                  \
        DS_BODY_REVIVE(ret, name, params, args, slot)
#define DS_BODY_GETCANCEL(ret, name, params, args, slot)                                           \
        struct ds_call c;                                                                          \
        ds_begin(&c, DS_ID_##name, slot, DS_RA, DS_FIRST(args));                                   \
        c.out.ptr = DS_REAL(ret, params) args;                                                     \
        ds_end(&c);                                                                                \
        return c.out.ptr;
/* The cancel calls: ds_cancel_route may replace the cancel object by the
 * one of the session now behind it, and returns the real function. */
#define DS_BODY_CANCEL(ret, name, params, args, slot)                                              \
        void *fr = ds_cancel_route(DS_ID_##name, slot, DS_RA, &DS_FIRST(args));                    \
        return ((ret(*) params)fr)args;
#define DS_BODY_FREECANCEL(ret, name, params, args, slot)                                          \
        void *fr = ds_cancel_route(DS_ID_##name, slot, DS_RA, &DS_FIRST(args));                    \
        ((ret(*) params)fr) args;

/* The exported interposers. */
#define DS_FN(kind, ret, name, params, args)                                                       \
        DS_EXPORT ret name params                                                                  \
        {                                                                                          \
                DS_BODY_##kind(ret, name, params, args, -1)                                        \
        }
#include "intercept.def"
#undef DS_FN

/* The per-library wrappers, for slots 0..DS_MAX_LIBS-1. */
#define DS_SLOT_FN(kind, ret, name, params, args, k)                                               \
        static ret ds_s##k##_##name params                                                         \
        {                                                                                          \
                DS_BODY_##kind(ret, name, params, args, k)                                         \
        }
#define DS_FN(kind, ret, name, params, args) DS_SLOT_FN(kind, ret, name, params, args, 0)
#include "intercept.def"
#undef DS_FN
#define DS_FN(kind, ret, name, params, args) DS_SLOT_FN(kind, ret, name, params, args, 1)
#include "intercept.def"
#undef DS_FN
#define DS_FN(kind, ret, name, params, args) DS_SLOT_FN(kind, ret, name, params, args, 2)
#include "intercept.def"
#undef DS_FN
#define DS_FN(kind, ret, name, params, args) DS_SLOT_FN(kind, ret, name, params, args, 3)
#include "intercept.def"
#undef DS_FN

_Static_assert(DS_MAX_LIBS == 4, "one DS_SLOT_FN expansion per library slot");

void *const ds_slot_fns[DS_MAX_LIBS][DS_ID_COUNT] = {
#define DS_FN(kind, ret, name, params, args) (void *)ds_s0_##name,
    {
#include "intercept.def"
    },
#undef DS_FN
#define DS_FN(kind, ret, name, params, args) (void *)ds_s1_##name,
    {
#include "intercept.def"
    },
#undef DS_FN
#define DS_FN(kind, ret, name, params, args) (void *)ds_s2_##name,
    {
#include "intercept.def"
    },
#undef DS_FN
#define DS_FN(kind, ret, name, params, args) (void *)ds_s3_##name,
    {
#include "intercept.def"
    },
#undef DS_FN
};

const char *const ds_fn_names[DS_ID_COUNT] = {
#define DS_FN(kind, ret, name, params, args) #name,
#include "intercept.def"
#undef DS_FN
};

const enum ds_kind ds_fn_kinds[DS_ID_COUNT] = {
#define DS_FN(kind, ret, name, params, args) DS_KIND_##kind,
#include "intercept.def"
#undef DS_FN
};

int ds_fn_id(const char *name)
{
        if (!(name[0] == 'P' && name[1] == 'Q') && !(name[0] == 'l' && name[1] == 'o'))
                return -1;
        for (int i = 0; i < DS_ID_COUNT; i++)
                if (strcmp(ds_fn_names[i], name) == 0)
                        return i;
        return -1;
}
