/* test_sqlscan.c - which custom settings a statement's text may set
 * (shim/sqlscan.c): the names the session-state check looks up before a
 * release, so that a released connection never loses one. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

/* shim.c's logging, which the scanner's debug line uses */
int ds_log_level = DS_LOG_WARN;
void ds_log(int level, const char *fmt, ...)
{
        (void)level, (void)fmt;
}

/* The names noted on a fresh connection record for sql, ","-joined. */
static char *noted(const char *sql, int *pinned)
{
        struct ds_conn e;
        memset(&e, 0, sizeof(e));
        ds_note_query(&e, sql);
        char *out = calloc(1, e.gucs_len + 1);
        cr_assert_not_null(out);
        for (uint32_t off = 0; off < e.gucs_len; off += (uint32_t)strlen(e.gucs + off) + 1) {
                if (off)
                        strcat(out, ",");
                strcat(out, e.gucs + off);
        }
        if (pinned)
                *pinned = e.pinned;
        free(e.gucs);
        return out;
}

static void expect(const char *sql, const char *names)
{
        int pinned;
        char *got = noted(sql, &pinned);
        cr_expect_str_eq(got, names, "%s: noted \"%s\", want \"%s\"", sql, got, names);
        cr_expect_eq(pinned, 0, "%s pinned its connection", sql);
        free(got);
}

Test(sqlscan, set_forms_note_the_setting_lower_cased)
{
        expect("SET app.tenant = '42'", "app.tenant");
        expect("set  session\tApp.Tenant TO 'x'", "app.tenant");
        expect("BEGIN; SET LOCAL app.tenant = 1; COMMIT", "app.tenant");
        expect("RESET app.tenant", "app.tenant");
        expect("SELECT 1; set my_ext.sub.level = on", "my_ext.sub.level");
}

Test(sqlscan, set_config_with_a_literal_name_notes_it)
{
        expect("SELECT set_config('app.user', 'u1', false)", "app.user");
        expect("select pg_catalog.set_config( 'App.User' , $1, true)", "app.user");
        expect("DO $$BEGIN PERFORM set_config('app.in_do', 'x', false); END$$", "app.in_do");
}

Test(sqlscan, ordinary_statements_note_nothing)
{
        expect("SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = 1.5", "");
        expect("UPDATE t SET x = t.x + 1 WHERE t.id = 1", "");
        expect("SELECT current_setting('app.tenant')", "");
        expect("SELECT 'a.b', 3.14, x.y FROM x", "");
        expect("SELECT 1", "");
        expect("", "");
        expect("SET work_mem = '8MB'", ""); /* pg_settings shows these */
}

Test(sqlscan, each_name_is_noted_once)
{
        expect("SET app.a = 1; SET APP.A = 2; SELECT set_config('app.b', '', false); SET app.a = 3",
               "app.a,app.b");
}

Test(sqlscan, a_column_after_set_is_a_harmless_extra_name)
{
        /* looked up by the check, finds no such setting */
        expect("UPDATE t SET comp.field = 1", "comp.field");
}

Test(sqlscan, more_names_than_are_kept_pin_the_connection)
{
        struct ds_conn e;
        memset(&e, 0, sizeof(e));
        char sql[64];
        for (int i = 0; i < 32; i++) {
                snprintf(sql, sizeof(sql), "SET app.n%d = 1", i);
                ds_note_query(&e, sql);
        }
        cr_expect_eq(e.pinned, 0, "32 names pinned the connection");
        ds_note_query(&e, "SET app.one_more = 1");
        cr_expect_eq(e.pinned, 1, "a 33rd name did not pin the connection");
        free(e.gucs);
}

Test(sqlscan, a_name_too_long_to_keep_pins_the_connection)
{
        char sql[400] = "SET app.";
        memset(sql + strlen(sql), 'x', 200);
        strcat(sql, " = 1");
        int pinned;
        free(noted(sql, &pinned));
        cr_expect_eq(pinned, 1);
}
