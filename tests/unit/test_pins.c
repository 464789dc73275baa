/* test_pins.c - the shim's scan of the SQL an application sends
 * (ds_sql_pins, shim/env.c): which statements leave session state that an
 * idle release would lose (SPEC 4.5), and which only look as if they did. */
#include <criterion/criterion.h>

#include "env.h"

static const char *const pinning[] = {
    "PREPARE p1 AS SELECT 1",
    "prepare p1 as select 1",
    "LISTEN channel_one",
    "SET work_mem = '8MB'",
    "set session work_mem to 1",
    "  \n\t-- a comment\nSET search_path = public",
    "select set_config('work_mem', '8MB', false)",
    "SELECT set_config('a.b', 'c', 0 = 1)",
    "CREATE TEMP TABLE t(x int)",
    "create temporary table t(x int)",
    "CREATE GLOBAL TEMPORARY TABLE t(x int)",
    "CREATE LOCAL TEMP TABLE t(x int)",
    "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
    "/* comment */ Create Temporary Table t(x int)",
    "SELECT pg_advisory_lock(42)",
    "SELECT PG_TRY_ADVISORY_LOCK(43)",
    "SELECT 1; set search_path = public",
    "SELECT 1;LISTEN x",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 7",
    "declare c cursor with\n hold for select 7",
};

static const char *const plain[] = {
    "",
    "SELECT 1",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 5;",
    "INSERT INTO t VALUES ('SET x = 1; LISTEN y')",
    "SELECT 'PREPARE p AS SELECT 1'",
    "SET LOCAL work_mem = '8MB'",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "set constraints all deferred",
    "SELECT set_config('work_mem', '9MB', true)",
    "SELECT pg_advisory_xact_lock(44)",
    "CREATE TABLE settings(x int)",
    "CREATE OR REPLACE VIEW v AS SELECT 1",
    "CREATE INDEX temp_idx ON t(x)",
    "SELECT * FROM listener",
    "SELECT prepared FROM setup",
    "DECLARE c CURSOR FOR SELECT 1",
    "SELECT 1 -- SET x = 1",
    "SELECT 1 /* LISTEN y */",
    "select with_hold from t",
    "  ",
};

Test(pins, statements_that_keep_session_state_pin)
{
        for (size_t i = 0; i < sizeof(pinning) / sizeof(pinning[0]); i++)
                cr_expect_eq(ds_sql_pins(pinning[i]), 1, "does not pin: %s", pinning[i]);
}

Test(pins, transaction_scoped_or_quoted_state_does_not_pin)
{
        for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
                cr_expect_eq(ds_sql_pins(plain[i]), 0, "pins: %s", plain[i]);
}
