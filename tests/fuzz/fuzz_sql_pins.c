/* fuzz_sql_pins.c - the shim's scan of the SQL text an application sends
 * (PQexec, PQsendQuery, PQprepare...): ds_sql_pins decides whether a
 * connection holds session state that an idle release would lose.
 *
 * The input is the text (up to its first NUL). Beyond not crashing or
 * reading past the text's end (ASan), and staying linear (libFuzzer's
 * -timeout):
 * - blanks in front of the text change nothing;
 * - the text after a statement that pins ("PREPARE ...;") still pins. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "env.h"

static void require(int cond, const char *what)
{
        if (!cond) {
                fprintf(stderr, "sql pins fuzz: %s\n", what);
                abort();
        }
}

static char *prefixed(const char *prefix, const char *q)
{
        size_t a = strlen(prefix), b = strlen(q);
        char *s = malloc(a + b + 1);
        if (s) {
                memcpy(s, prefix, a);
                memcpy(s + a, q, b + 1);
        }
        return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char *q = strndup((const char *)data, size);
        if (!q)
                return 0;
        int pins = ds_sql_pins(q);
        require(pins == 0 || pins == 1, "not a truth value");
        char *s = prefixed(" \n\t", q);
        if (s)
                require(ds_sql_pins(s) == pins, "leading blanks changed the answer");
        free(s);
        s = prefixed("PREPARE p AS SELECT 1;", q);
        if (s)
                require(ds_sql_pins(s) == 1, "a PREPARE followed by more text does not pin");
        free(s);
        free(q);
        return 0;
}
