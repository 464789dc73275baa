/* pqapi.h - the libpq functions the shim tests use, as a table of pointers,
 * so one test body runs against libpq loaded in each way programs load it. */
#ifndef DSTEST_PQAPI_H
#define DSTEST_PQAPI_H

#include <libpq-fe.h>

struct pq_api {
        PGconn *(*connectdb)(const char *conninfo);
        PGconn *(*connectdb_params)(const char *const *keywords, const char *const *values,
                                    int expand_dbname);
        PGconn *(*connect_start)(const char *conninfo);
        PostgresPollingStatusType (*connect_poll)(PGconn *conn);
        void (*finish)(PGconn *conn);
        void (*reset)(PGconn *conn);
        PGPing (*ping)(const char *conninfo);
        ConnStatusType (*status)(const PGconn *conn);
        char *(*error_message)(const PGconn *conn);
        PGresult *(*exec)(PGconn *conn, const char *query);
        ExecStatusType (*result_status)(const PGresult *res);
        char *(*getvalue)(const PGresult *res, int row, int col);
        void (*clear)(PGresult *res);
        int (*socket)(const PGconn *conn);
        int (*backend_pid)(const PGconn *conn);
        PGconn *(*setdb_login)(const char *host, const char *port, const char *options,
                               const char *tty, const char *db, const char *user, const char *pwd);
        PGconn *(*connect_start_params)(const char *const *keywords, const char *const *values,
                                        int expand_dbname);
        int (*reset_start)(PGconn *conn);
        PostgresPollingStatusType (*reset_poll)(PGconn *conn);
};

/* Fills api with functions whose calls to libpq are made from the code of
 * the object that defines them (through its own PLT/GOT). */
#define PQAPI_DEFINE(fn_name)                                                                      \
        static PGconn *m_connectdb(const char *c)                                                  \
        {                                                                                          \
                return PQconnectdb(c);                                                             \
        }                                                                                          \
        static PGconn *m_connectdb_params(const char *const *k, const char *const *v, int e)       \
        {                                                                                          \
                return PQconnectdbParams(k, v, e);                                                 \
        }                                                                                          \
        static PGconn *m_connect_start(const char *c)                                              \
        {                                                                                          \
                return PQconnectStart(c);                                                          \
        }                                                                                          \
        static PostgresPollingStatusType m_connect_poll(PGconn *c)                                 \
        {                                                                                          \
                return PQconnectPoll(c);                                                           \
        }                                                                                          \
        static void m_finish(PGconn *c)                                                            \
        {                                                                                          \
                PQfinish(c);                                                                       \
        }                                                                                          \
        static void m_reset(PGconn *c)                                                             \
        {                                                                                          \
                PQreset(c);                                                                        \
        }                                                                                          \
        static PGPing m_ping(const char *c)                                                        \
        {                                                                                          \
                return PQping(c);                                                                  \
        }                                                                                          \
        static ConnStatusType m_status(const PGconn *c)                                            \
        {                                                                                          \
                return PQstatus(c);                                                                \
        }                                                                                          \
        static char *m_error_message(const PGconn *c)                                              \
        {                                                                                          \
                return PQerrorMessage(c);                                                          \
        }                                                                                          \
        static PGresult *m_exec(PGconn *c, const char *q)                                          \
        {                                                                                          \
                return PQexec(c, q);                                                               \
        }                                                                                          \
        static ExecStatusType m_result_status(const PGresult *r)                                   \
        {                                                                                          \
                return PQresultStatus(r);                                                          \
        }                                                                                          \
        static char *m_getvalue(const PGresult *r, int row, int col)                               \
        {                                                                                          \
                return PQgetvalue(r, row, col);                                                    \
        }                                                                                          \
        static void m_clear(PGresult *r)                                                           \
        {                                                                                          \
                PQclear(r);                                                                        \
        }                                                                                          \
        static int m_socket(const PGconn *c)                                                       \
        {                                                                                          \
                return PQsocket(c);                                                                \
        }                                                                                          \
        static int m_backend_pid(const PGconn *c)                                                  \
        {                                                                                          \
                return PQbackendPID(c);                                                            \
        }                                                                                          \
        static PGconn *m_setdb_login(const char *h, const char *p, const char *o, const char *t,   \
                                     const char *d, const char *u, const char *w)                  \
        {                                                                                          \
                return PQsetdbLogin(h, p, o, t, d, u, w);                                          \
        }                                                                                          \
        static PGconn *m_connect_start_params(const char *const *k, const char *const *v, int e)   \
        {                                                                                          \
                return PQconnectStartParams(k, v, e);                                              \
        }                                                                                          \
        static int m_reset_start(PGconn *c)                                                        \
        {                                                                                          \
                return PQresetStart(c);                                                            \
        }                                                                                          \
        static PostgresPollingStatusType m_reset_poll(PGconn *c)                                   \
        {                                                                                          \
                return PQresetPoll(c);                                                             \
        }                                                                                          \
        const struct pq_api *fn_name(void)                                                         \
        {                                                                                          \
                static const struct pq_api api = {m_connectdb,                                     \
                                                  m_connectdb_params,                              \
                                                  m_connect_start,                                 \
                                                  m_connect_poll,                                  \
                                                  m_finish,                                        \
                                                  m_reset,                                         \
                                                  m_ping,                                          \
                                                  m_status,                                        \
                                                  m_error_message,                                 \
                                                  m_exec,                                          \
                                                  m_result_status,                                 \
                                                  m_getvalue,                                      \
                                                  m_clear,                                         \
                                                  m_socket,                                        \
                                                  m_backend_pid,                                   \
                                                  m_setdb_login,                                   \
                                                  m_connect_start_params,                          \
                                                  m_reset_start,                                   \
                                                  m_reset_poll};                                   \
                return &api;                                                                       \
        }

#endif
