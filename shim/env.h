/* env.h - the shim's parsers of untrusted text (env.c): pure functions,
 * also built into the fuzz harnesses (tests/fuzz/fuzz_env.c). */
#ifndef DYNSHIM_ENV_H
#define DYNSHIM_ENV_H

#include <stddef.h>
#include <stdint.h>

/* DYNSHIM_LOG: warn/warning/0, info/1, debug/2 -> 0, 1, 2. 0 or -EINVAL
 * (*level unchanged). */
int ds_env_log_level(const char *v, int *level);
/* DYNSHIM_ON_ERROR: open or closed -> *closed 0 or 1. 0 or -EINVAL. */
int ds_env_on_error(const char *v, int *closed);
/* DYNSHIM_WAIT_TIMEOUT: a duration (ds_parse_duration_ms). 0 or -EINVAL. */
int ds_env_wait_timeout(const char *v, uint32_t *ms);

/* The scraper name from a command line (buf: n bytes of
 * NUL-separated arguments as /proc/self/cmdline holds them, with
 * buf[n] == '\0'): for an interpreter, the script's base name without
 * extension (python -m pkg.mod: the module's last component); else the
 * program's base name; "unknown" when there is none. Always a non-empty,
 * terminated string of at most len - 1 bytes (len >= 8). */
void ds_scraper_from_cmdline(const char *buf, size_t n, char *out, size_t len);

#endif
