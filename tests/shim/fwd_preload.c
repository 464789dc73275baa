/* fwd_preload.c - libdsfwd.so: a preload that interposes every name the shim
 * interposes (shim/intercept.def) and does nothing but call libpq's own
 * function. Not part of dynshim: the benchmark runs it beside the shim to
 * show what interposing alone costs a client (one more indirect call per
 * libpq call, in code the caches may have lost while the client waited for
 * the server), the floor under any preloaded library's cost, so that the
 * shim's own share can be told apart. It finds libpq with dlsym(RTLD_NEXT):
 * enough for programs linked with it (pgbench, txn_bench), not for modules
 * that load it privately. */
#include <dlfcn.h>
#include <libpq-events.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>

#define DS_EXPORT __attribute__((visibility("default")))

/* One pointer per function. */
#define DS_FN(kind, ret, name, params, args) static ret(*real_##name) params;
#include "../../shim/intercept.def"
#undef DS_FN

/* Each pointer is resolved at the function's first call; after that a call
 * costs one relaxed load and an indirect call. Void functions (PQreset,
 * PQfinish) return nothing. */
static void *resolve(const char *name)
{
        void *f = dlsym(RTLD_NEXT, name);
        if (!f) {
                fprintf(stderr, "libdsfwd: %s not found after this library\n", name);
                abort();
        }
        return f;
}

#define DS_REAL(ret, name, params)                                                                 \
        ret(*r_) params = __atomic_load_n(&real_##name, __ATOMIC_RELAXED);                         \
        if (__builtin_expect(!r_, 0)) {                                                            \
                r_ = (ret(*) params)resolve(#name);                                                \
                __atomic_store_n(&real_##name, r_, __ATOMIC_RELAXED);                              \
        }
#define DS_CALL_RESET(args)   r_ args
#define DS_CALL_FINISH        DS_CALL_RESET
#define DS_CALL_CONNECT(args) return r_ args
#define DS_CALL_START         DS_CALL_CONNECT
#define DS_CALL_POLL          DS_CALL_CONNECT
#define DS_CALL_RESET_START   DS_CALL_CONNECT
#define DS_CALL_PING          DS_CALL_CONNECT
#define DS_CALL_ACTIVITY      DS_CALL_CONNECT
#define DS_CALL_ERRMSG        DS_CALL_CONNECT
#define DS_CALL_GETTER        DS_CALL_CONNECT
#define DS_CALL_REVIVE        DS_CALL_CONNECT
#define DS_CALL_QUERY         DS_CALL_CONNECT
#define DS_CALL_PID           DS_CALL_CONNECT
#define DS_CALL_GETCANCEL     DS_CALL_CONNECT
#define DS_CALL_CANCEL        DS_CALL_CONNECT
#define DS_CALL_FREECANCEL    DS_CALL_RESET
#define DS_FN(kind, ret, name, params, args)                                                       \
        DS_EXPORT ret name params                                                                  \
        {                                                                                          \
                DS_REAL(ret, name, params)                                                         \
                DS_CALL_##kind(args);                                                              \
        }
#include "../../shim/intercept.def"
#undef DS_FN
