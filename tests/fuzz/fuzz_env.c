/* fuzz_env.c - the shim's environment values and its scraper name.
 *
 * The input is used twice: as the value of DYNSHIM_LOG, DYNSHIM_ON_ERROR
 * and DYNSHIM_WAIT_TIMEOUT (up to its first NUL), and as the bytes of
 * /proc/self/cmdline from which the scraper name is derived when
 * DYNSHIM_SCRAPER is unset. Beyond not crashing:
 * - DYNSHIM_LOG accepts exactly its nine spellings, giving levels 0 to 2;
 * - DYNSHIM_ON_ERROR accepts exactly "open" and "closed";
 * - DYNSHIM_WAIT_TIMEOUT accepts what ds_parse_duration_ms accepts, with
 *   the same value, at most one day; a refused value changes nothing;
 * - the scraper name is terminated, non-empty, shorter than DS_NAME_MAX,
 *   and either "unknown" or a run of bytes of the command line. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dynshim/config.h"
#include "env.h"

static void require(int cond, const char *what)
{
        if (!cond) {
                fprintf(stderr, "env fuzz: %s\n", what);
                abort();
        }
}

static void values(const char *v)
{
        static const char *const words[] = {"0", "warn", "warning", "1", "info", "2", "debug"};
        static const int levels[] = {0, 0, 0, 1, 1, 2, 2};
        int level = 7, want = -1;
        for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
                if (!strcmp(v, words[i]))
                        want = levels[i];
        int rc = ds_env_log_level(v, &level);
        require(want < 0 ? rc != 0 && level == 7 : rc == 0 && level == want,
                "DYNSHIM_LOG accepted a value that is not a level, or refused one");

        int closed = 7;
        rc = ds_env_on_error(v, &closed);
        if (!strcmp(v, "open") || !strcmp(v, "closed"))
                require(rc == 0 && closed == !strcmp(v, "closed"), "DYNSHIM_ON_ERROR misread");
        else
                require(rc != 0 && closed == 7, "DYNSHIM_ON_ERROR accepted something else");

        uint32_t ms = 12345, d = 0;
        rc = ds_env_wait_timeout(v, &ms);
        int drc = ds_parse_duration_ms(v, &d);
        require((rc == 0) == (drc == 0), "DYNSHIM_WAIT_TIMEOUT disagrees with the duration parser");
        if (rc == 0)
                require(ms == d && ms <= 86400000u, "DYNSHIM_WAIT_TIMEOUT gave another value");
        else
                require(ms == 12345, "a refused DYNSHIM_WAIT_TIMEOUT changed the timeout");
}

static void scraper(const uint8_t *data, size_t size)
{
        char *buf = malloc(size + 1);
        if (!buf)
                return;
        memcpy(buf, data, size);
        buf[size] = '\0';
        char out[DS_NAME_MAX];
        memset(out, 'x', sizeof(out));
        ds_scraper_from_cmdline(buf, size, out, sizeof(out));
        size_t len = strnlen(out, sizeof(out));
        require(len > 0 && len < sizeof(out), "scraper name empty or unterminated");
        require(!strcmp(out, "unknown") || memmem(data, size, out, len),
                "scraper name is not taken from the command line");
        free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char *v = strndup((const char *)data, size);
        if (!v)
                return 0;
        values(v);
        free(v);
        scraper(data, size);
        return 0;
}
