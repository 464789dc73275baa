/* env.c - the shim's parsers of untrusted text, as pure functions (no
 * global state, no system calls) so that tests/fuzz can call them: the
 * environment values, the scraper name derived from a command line, and
 * the scan of SQL text for statements that pin a connection. */
#include "env.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "dynshim/config.h"

/* ---- environment values ---- */

int ds_env_log_level(const char *v, int *level)
{
        if (!strcmp(v, "0") || !strcmp(v, "warn") || !strcmp(v, "warning"))
                *level = 0;
        else if (!strcmp(v, "1") || !strcmp(v, "info"))
                *level = 1;
        else if (!strcmp(v, "2") || !strcmp(v, "debug"))
                *level = 2;
        else
                return -EINVAL;
        return 0;
}

int ds_env_on_error(const char *v, int *closed)
{
        if (!strcmp(v, "closed"))
                *closed = 1;
        else if (!strcmp(v, "open"))
                *closed = 0;
        else
                return -EINVAL;
        return 0;
}

int ds_env_wait_timeout(const char *v, uint32_t *ms)
{
        uint32_t t;
        if (ds_parse_duration_ms(v, &t) != 0)
                return -EINVAL;
        *ms = t;
        return 0;
}

/* ---- the scraper name from a command line ---- */

static int is_interpreter(const char *prog)
{
        static const char *const names[] = {"python", "ruby", "node", "php", "perl"};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                if (!strncmp(prog, names[i], strlen(names[i])))
                        return 1;
        return 0;
}

static const char *base_name(const char *p)
{
        const char *s = strrchr(p, '/');
        return s ? s + 1 : p;
}

/* Copies the first l bytes of s (l < len) into out unless l is 0. */
static void set_name(char *out, size_t len, const char *s, size_t l)
{
        if (l == 0)
                return;
        if (l >= len)
                l = len - 1;
        memcpy(out, s, l);
        out[l] = '\0';
}

void ds_scraper_from_cmdline(const char *buf, size_t n, char *out, size_t len)
{
        snprintf(out, len, "unknown");
        if (n == 0)
                return;
        const char *argv[64];
        int argc = 0;
        for (const char *p = buf; p < buf + n && argc < 64; p += strlen(p) + 1)
                argv[argc++] = p;
        const char *prog = base_name(argv[0]);
        set_name(out, len, prog, strlen(prog));
        if (!is_interpreter(prog))
                return;
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];
                if (!strcmp(a, "-m") && i + 1 < argc) {
                        const char *dot = strrchr(argv[i + 1], '.');
                        const char *m = dot ? dot + 1 : argv[i + 1];
                        set_name(out, len, m, strlen(m));
                        return;
                }
                if (!strcmp(a, "-c") || !strcmp(a, "-e") || !strcmp(a, "-r") || !strcmp(a, "-"))
                        return; /* inline code: the interpreter's own name */
                if (a[0] == '-')
                        continue;
                const char *b = base_name(a);
                set_name(out, len, b, strcspn(b, "."));
                return;
        }
}

/* ---- pins: session state a reconnect would lose ---- */

/* Whether the word w (lowercase letters) starts at p, in any case. A byte
 * with bit 5 set equals a lowercase letter only if it is that letter in
 * either case, and the text's NUL ends the comparison. */
static int word_at(const char *p, const char *w)
{
        size_t n = 0;
        for (; w[n]; n++)
                if ((p[n] | 0x20) != w[n])
                        return 0;
        return !isalnum((unsigned char)p[n]) && p[n] != '_';
}

/* Whether the text at p starts with the lowercase identifier w, in any case. */
static int name_at(const char *p, const char *w)
{
        for (size_t n = 0; w[n]; n++)
                if ((p[n] | 0x20) != w[n] && !(w[n] == '_' && p[n] == '_'))
                        return 0;
        return 1;
}

static const char *skip_blank(const char *p)
{
        for (;;) {
                while (isspace((unsigned char)*p))
                        p++;
                if (p[0] == '-' && p[1] == '-') {
                        p += strcspn(p, "\n");
                        continue;
                }
                if (p[0] == '/' && p[1] == '*') {
                        const char *e = strstr(p + 2, "*/");
                        if (!e)
                                return p + strlen(p);
                        p = e + 2;
                        continue;
                }
                return p;
        }
}

/* A statement starting at p that keeps state in the session. Its first
 * letter picks the one keyword it can start with (SELECT, INSERT, UPDATE
 * and the rest cost one comparison each). */
static int statement_pins(const char *p)
{
        const char *q;
        switch (*p | 0x20) {
        case 'p':
                return word_at(p, "prepare");
        case 'l':
                return word_at(p, "listen");
        case 's':
                if (!word_at(p, "set"))
                        return 0;
                q = skip_blank(p + 3);
                return !(word_at(q, "local") || word_at(q, "transaction") ||
                         word_at(q, "constraints"));
        case 'c':
                if (!word_at(p, "create"))
                        return 0;
                q = skip_blank(p + 6);
                if (word_at(q, "or")) {
                        /* or replace; "or" then anything else cannot be a
                         * temporary object (and may end the text) */
                        q = skip_blank(q + 2);
                        if (!word_at(q, "replace"))
                                return 0;
                        q = skip_blank(q + 7);
                }
                if (word_at(q, "global") || word_at(q, "local"))
                        q = skip_blank(q + (word_at(q, "local") ? 5 : 6));
                return word_at(q, "temp") || word_at(q, "temporary");
        default:
                return 0;
        }
}

/* set_config(name, value, is_local) at p (just after the name): pins unless
 * is_local is plainly true. */
static int set_config_pins(const char *p)
{
        p = skip_blank(p);
        if (*p != '(')
                return 0;
        int depth = 0;
        const char *last = NULL;
        for (; *p; p++) {
                if (*p == '\'') {
                        while (*++p && *p != '\'')
                                ;
                        if (!*p)
                                break;
                } else if (*p == '(') {
                        if (depth++ == 0)
                                last = p + 1;
                } else if (*p == ',' && depth == 1) {
                        last = p + 1;
                } else if (*p == ')' && --depth == 0) {
                        const char *a = skip_blank(last);
                        return !(word_at(a, "true") || !strncasecmp(a, "'t'", 3) ||
                                 !strncasecmp(a, "'true'", 6));
                }
        }
        return 1;
}

/* Whether SQL text q (one or more statements) keeps state in the session
 * that a reconnect would lose (SPEC 4.5). String literals are skipped; a
 * keyword anywhere else errs on the side of pinning. Linear in the text,
 * and cheap, as it runs on every query of an unpinned connection: after a
 * statement's first word only quotes, semicolons and underscores (in
 * pg_advisory_lock, pg_try_advisory_lock, set_config) need a look, and
 * strcspn finds them a vector at a time; a DECLARE also looks at w's. */
int ds_sql_pins(const char *q)
{
        const char *p = q;
        while (*p) {
                p = skip_blank(p);
                if (!*p)
                        break;
                if (statement_pins(p))
                        return 1;
                const char *stops = (*p | 0x20) == 'd' && word_at(p, "declare") ? "'_;wW" : "'_;";
                for (p += strcspn(p, stops); *p && *p != ';'; p += strcspn(p, stops)) {
                        if (*p == '\'') {
                                const char *end = strchr(p + 1, '\'');
                                if (!end)
                                        return 0;
                                p = end + 1;
                                continue;
                        }
                        if (*p == '_') {
                                if (p - q >= 2 && (name_at(p - 2, "pg_advisory_lock") ||
                                                   name_at(p - 2, "pg_try_advisory_lock")))
                                        return 1;
                                if (p - q >= 3 && name_at(p - 3, "set_config") &&
                                    set_config_pins(p + 7))
                                        return 1;
                        } else if (word_at(p, "with") && word_at(skip_blank(p + 4), "hold")) {
                                return 1;
                        }
                        p++;
                }
                if (*p == ';')
                        p++;
        }
        return 0;
}
