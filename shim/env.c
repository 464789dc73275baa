/* env.c - the shim's parsers of untrusted text, as pure functions (no
 * global state, no system calls) so that tests/fuzz can call them: the
 * environment values and the scraper name derived from a command line. */
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
