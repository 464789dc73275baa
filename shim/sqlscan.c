/* sqlscan.c - the custom settings a statement's text may set, noted on its
 * connection for the session-state check before a release (shim.c).
 *
 * The server lists no placeholder settings (app.tenant and the like), so
 * the check can only look up names it is given. The names a program sets
 * itself appear in its SQL: SET [SESSION|LOCAL] a.b, RESET a.b, or
 * set_config('a.b', ...). The application's calls pay one strchr for a dot
 * (ds_note_query, shim.h); only a text with one is scanned here. */
#include "shim.h"

#include <stdlib.h>
#include <string.h>

/* How many custom-setting names a connection notes; one more pins it. */
#define GUC_NAMES_MAX 32
#define GUC_NAME_MAX  128

/* ASCII only, whatever locale the program set: a name goes into the
 * check's SQL as it is, and must match keywords as the server reads them. */
static int ident_char(unsigned char ch)
{
        return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
               ch == '_' || ch == '$';
}

static unsigned char ascii_lower(unsigned char ch)
{
        return ch >= 'A' && ch <= 'Z' ? (unsigned char)(ch + ('a' - 'A')) : ch;
}

static int blank(unsigned char ch)
{
        return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* 1 if the n bytes at w are word (lower case) in any case. */
static int is_word(const char *w, size_t n, const char *word)
{
        if (strlen(word) != n)
                return 0;
        for (size_t i = 0; i < n; i++)
                if (ascii_lower((unsigned char)w[i]) != (unsigned char)word[i])
                        return 0;
        return 1;
}

/* 1 if the word ending just before end (after skipping blanks back from
 * it) is one of list's words (case-insensitive). */
static int word_before(const char *sql, const char *end, const char *const *list)
{
        while (end > sql && blank((unsigned char)end[-1]))
                end--;
        const char *w = end;
        while (w > sql && ident_char((unsigned char)w[-1]))
                w--;
        for (; *list; list++)
                if (is_word(w, (size_t)(end - w), *list))
                        return 1;
        return 0;
}

/* Adds name (len bytes, lower-cased here) to e's names unless there. */
static void note_guc(struct ds_conn *e, const char *name, size_t len)
{
        char low[GUC_NAME_MAX];
        if (len >= sizeof(low)) {
                e->pinned = 1; /* a name too long to keep: cannot be checked */
                return;
        }
        for (size_t i = 0; i < len; i++)
                low[i] = (char)ascii_lower((unsigned char)name[i]);
        low[len] = '\0';
        uint32_t n = 0;
        for (uint32_t off = 0; off < e->gucs_len; off += (uint32_t)strlen(e->gucs + off) + 1, n++)
                if (!strcmp(e->gucs + off, low))
                        return;
        char *more = n < GUC_NAMES_MAX ? realloc(e->gucs, e->gucs_len + len + 1) : NULL;
        if (!more) {
                e->pinned = 1; /* more names than are kept: in doubt, keep the session */
                ds_debug("connection %p set too many custom settings to follow; it is pinned",
                         (void *)e->conn);
                return;
        }
        memcpy(more + e->gucs_len, low, len + 1);
        e->gucs = more;
        e->gucs_len += (uint32_t)len + 1;
}

/* A dotted name at each '.' of sql that follows SET, RESET, SESSION, LOCAL
 * (SET [SESSION|LOCAL] a.b, RESET a.b) or "set_config('": a custom setting
 * the statement may set. A name that only looks like one (UPDATE t SET c.f
 * = ...) costs the check a lookup that finds nothing. */
void ds_scan_query(struct ds_conn *e, const char *sql)
{
        static const char *const set_words[] = {"set", "reset", "session", "local", NULL};
        static const char *const config_words[] = {"set_config", NULL};
        for (const char *dot = strchr(sql, '.'); dot; dot = strchr(dot, '.')) {
                const char *b = dot;
                while (b > sql && ident_char((unsigned char)b[-1]))
                        b--;
                const char *end = dot + 1;
                while (ident_char((unsigned char)*end) ||
                       (*end == '.' && ident_char((unsigned char)end[1])))
                        end++;
                if (b == dot || end == dot + 1 || (*b >= '0' && *b <= '9')) {
                        dot = end;
                        continue;
                }
                int hit;
                if (b > sql && b[-1] == '\'') {
                        const char *q = b - 1;
                        while (q > sql && blank((unsigned char)q[-1]))
                                q--;
                        hit = q > sql && q[-1] == '(' && word_before(sql, q - 1, config_words);
                } else {
                        hit = word_before(sql, b, set_words);
                }
                if (hit)
                        note_guc(e, b, (size_t)(end - b));
                dot = end;
        }
}
