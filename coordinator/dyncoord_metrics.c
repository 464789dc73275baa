/* dyncoord_metrics.c - the HTTP endpoint of dyncoord --watchdog
 * --metrics-listen ADDR:PORT: GET /metrics answers with the text of
 * --stats --prometheus, read from the segment at that moment, so a
 * Prometheus server scrapes the pool the way it scrapes any exporter.
 *
 * The HTTP server is libmicrohttpd's (one thread of its own, a bounded
 * number of connections, a timeout for idle ones). We open the listening
 * socket ourselves, to report the exact reason a bind fails and the port
 * chosen for port 0. Every request attaches to the segment, reads a
 * snapshot and detaches: a request never shares the watchdog's handle, and a
 * segment recreated meanwhile is simply read anew. */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dynshim/coord.h"
#include "dyncoord.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define METRICS_MAX_CONNS    16
#define METRICS_TIMEOUT_S    10

struct metrics_server {
        struct MHD_Daemon *d;
        int fd;
        char segment[256];
};

/* Splits "ADDR:PORT" / "[ADDR]:PORT" into host and port. */
static int split_listen(const char *spec, char *host, size_t hostlen, char *port, size_t portlen)
{
        const char *colon;
        size_t hlen;
        if (spec[0] == '[') {
                const char *close = strchr(spec, ']');
                if (!close || close[1] != ':')
                        return -EINVAL;
                hlen = (size_t)(close - spec - 1);
                colon = close + 1;
                if (hlen == 0 || hlen >= hostlen)
                        return -EINVAL;
                memcpy(host, spec + 1, hlen);
        } else {
                colon = strrchr(spec, ':');
                if (!colon || strchr(spec, ':') != colon)
                        return -EINVAL; /* an IPv6 address needs brackets */
                hlen = (size_t)(colon - spec);
                if (hlen == 0 || hlen >= hostlen)
                        return -EINVAL;
                memcpy(host, spec, hlen);
        }
        host[hlen] = '\0';
        snprintf(port, portlen, "%s", colon + 1);
        return 0;
}

int metrics_parse_listen(const char *spec, struct sockaddr_storage *ss)
{
        char host[256], port[16];
        uint32_t p;
        if (split_listen(spec, host, sizeof(host), port, sizeof(port)) != 0)
                return usage_error("--metrics-listen: '%s' is not ADDR:PORT (e.g. 127.0.0.1:9432 "
                                   "or [::1]:9432)",
                                   spec);
        if (ds_parse_u32(port, 0, 65535, &p) != 0)
                return usage_error("--metrics-listen: '%s' is not a port number from 0 to 65535",
                                   port);
        /* numeric only: parsing an option never asks a name server */
        if (strcmp(host, "localhost") == 0)
                snprintf(host, sizeof(host), "127.0.0.1");
        struct addrinfo hints = {.ai_family = AF_UNSPEC,
                                 .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE},
                        *res = NULL;
        int rc = getaddrinfo(host, port, &hints, &res);
        if (rc != 0 || !res) {
                if (res)
                        freeaddrinfo(res);
                return usage_error("--metrics-listen: '%s' is not an IP address (e.g. 127.0.0.1, "
                                   "0.0.0.0, [::1]) or localhost",
                                   host);
        }
        if (ss) {
                memset(ss, 0, sizeof(*ss));
                memcpy(ss, res->ai_addr, res->ai_addrlen);
        }
        freeaddrinfo(res);
        return 0;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             char *body, size_t len, int must_free)
{
        struct MHD_Response *r = MHD_create_response_from_buffer(
            len, body, must_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
        if (!r) {
                if (must_free)
                        free(body);
                return MHD_NO;
        }
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
        if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
                MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
        enum MHD_Result ret = MHD_queue_response(c, status, r);
        MHD_destroy_response(r);
        return ret;
}

static enum MHD_Result text_reply(struct MHD_Connection *c, unsigned status, const char *msg)
{
        char *body = strdup(msg);
        return body ? reply(c, status, "text/plain; charset=utf-8", body, strlen(body), 1) : MHD_NO;
}

static enum MHD_Result serve(void *cls, struct MHD_Connection *c, const char *url,
                             const char *method, const char *version, const char *upload_data,
                             size_t *upload_data_size, void **req_cls)
{
        struct metrics_server *m = cls;
        (void)version;
        (void)upload_data;
        if (*upload_data_size) { /* a body is not expected: ignore it */
                *upload_data_size = 0;
                return MHD_YES;
        }
        (void)req_cls;
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
                return text_reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        if (strcmp(url, "/") == 0)
                return text_reply(c, MHD_HTTP_OK,
                                  "dyncoord " DS_VERSION_STRING ": the metrics are at /metrics\n");
        if (strcmp(url, "/metrics") != 0)
                return text_reply(c, MHD_HTTP_NOT_FOUND,
                                  "not found: the metrics are at /metrics\n");
        ds_handle *h = NULL;
        struct ds_stats st;
        char err[512] = "";
        int rc = ds_attach(m->segment, 0, &h, err, sizeof(err));
        if (rc == 0) {
                rc = ds_stats_get(h, &st);
                if (rc)
                        snprintf(err, sizeof(err), "could not read segment %s: %s", m->segment,
                                 strerror(-rc));
                ds_detach(h);
        }
        if (rc) {
                /* the scrape fails visibly (up == 0 for Prometheus) */
                char msg[600];
                snprintf(msg, sizeof(msg), "%s\n", err[0] ? err : strerror(-rc));
                return text_reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
        }
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f) {
                ds_stats_free(&st);
                return text_reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        }
        print_stats_prometheus(f, m->segment, &st);
        ds_stats_free(&st);
        if (fclose(f) != 0) {
                free(buf);
                return text_reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        }
        return reply(c, MHD_HTTP_OK, METRICS_CONTENT_TYPE, buf, len, 1);
}

static void format_addr(const struct sockaddr_storage *ss, char *out, size_t len)
{
        char host[INET6_ADDRSTRLEN] = "?";
        unsigned port = 0;
        if (ss->ss_family == AF_INET6) {
                const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
                inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
                port = ntohs(a->sin6_port);
                snprintf(out, len, "[%s]:%u", host, port);
        } else {
                const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
                inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
                port = ntohs(a->sin_port);
                snprintf(out, len, "%s:%u", host, port);
        }
}

int metrics_start(const char *spec, const char *segment, struct metrics_server **out, char *bound,
                  size_t boundlen, char *why, size_t whylen)
{
        struct sockaddr_storage ss;
        if (metrics_parse_listen(spec, &ss) != 0) {
                snprintf(why, whylen, "'%s' is not a usable ADDR:PORT", spec);
                return -EINVAL;
        }
        struct metrics_server *m = calloc(1, sizeof(*m));
        if (!m) {
                snprintf(why, whylen, "out of memory");
                return -ENOMEM;
        }
        snprintf(m->segment, sizeof(m->segment), "%s", segment);
        socklen_t slen =
            ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        int one = 1, rc;
        m->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (m->fd < 0 || setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
            bind(m->fd, (struct sockaddr *)&ss, slen) != 0 || listen(m->fd, 32) != 0) {
                rc = -errno;
                snprintf(why, whylen, "cannot listen on %s: %s", spec, strerror(errno));
                goto fail;
        }
        slen = sizeof(ss);
        if (getsockname(m->fd, (struct sockaddr *)&ss, &slen) != 0) {
                rc = -errno;
                snprintf(why, whylen, "cannot listen on %s: %s", spec, strerror(errno));
                goto fail;
        }
        format_addr(&ss, bound, boundlen);
        unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
        if (ss.ss_family == AF_INET6)
                flags |= MHD_USE_IPv6;
        m->d = MHD_start_daemon(flags, 0, NULL, NULL, serve, m, MHD_OPTION_LISTEN_SOCKET, m->fd,
                                MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_MAX_CONNS,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_TIMEOUT_S,
                                MHD_OPTION_END);
        if (!m->d) {
                rc = -EIO;
                snprintf(why, whylen, "cannot serve HTTP on %s: the HTTP server did not start",
                         bound);
                goto fail;
        }
        *out = m;
        return 0;
fail:
        if (m->fd >= 0)
                close(m->fd);
        free(m);
        return rc;
}

void metrics_stop(struct metrics_server *m)
{
        if (!m)
                return;
        MHD_stop_daemon(m->d); /* closes the listening socket it was given */
        free(m);
}
