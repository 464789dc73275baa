/* fuzz_dyncoord_args.c - dyncoord's command-line parsing (parse_args in
 * coordinator/dyncoord.c, compiled here without its main).
 *
 * The input is an argument vector: its NUL-separated pieces, after
 * argv[0] = "dyncoord". Beyond not crashing: the parser returns 0 or
 * -EINVAL, and a command line it accepts (without --help) is consistent:
 * exactly one command; --run has a non-empty name shorter than
 * DS_NAME_MAX and a command after --; --set/--unset have pairs; options
 * that belong to one command come with that command; one output format;
 * a --mode the owner can read and write, within 0777. Its messages go to
 * /dev/null (sanitizer reports still reach the real stderr). */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dyncoord.h"

static void require(int cond, const char *what)
{
        if (!cond) {
                fprintf(stdout, "dyncoord args fuzz: %s\n", what);
                abort();
        }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        (void)argc, (void)argv;
        FILE *null = fopen("/dev/null", "w");
        if (null)
                stderr = null;
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size > 4096)
                return 0;
        char *buf = malloc(size + 1);
        char **argv = calloc(size + 3, sizeof(char *));
        if (!buf || !argv) {
                free(buf);
                free(argv);
                return 0;
        }
        memcpy(buf, data, size);
        buf[size] = '\0';
        int argc = 0;
        argv[argc++] = "dyncoord";
        for (char *p = buf; p < buf + size; p += strlen(p) + 1)
                argv[argc++] = p;
        argv[argc] = NULL;

        struct options o;
        optind = 0; /* a full reinitialisation of getopt for every input */
        int rc = parse_args(argc, argv, &o);
        require(rc == 0 || rc == -EINVAL, "parse_args returned neither 0 nor -EINVAL");
        if (rc == 0 && !o.help) {
                require(o.cmd != CMD_NONE, "accepted without a command");
                if (o.cmd == CMD_RUN)
                        require(o.run_name && o.run_name[0] && strlen(o.run_name) < DS_NAME_MAX &&
                                    o.command && o.command[0],
                                "--run accepted without a valid name and a command");
                else
                        require(!o.command && !o.run_only, "a --run option with another command");
                if (o.cmd == CMD_SET || o.cmd == CMD_UNSET)
                        require(o.n_pairs > 0, "--set/--unset accepted without pairs");
                require(o.cmd == CMD_INIT || !o.init_only, "an --init option with another command");
                require(o.cmd == CMD_STATS || !o.stats_only,
                        "a --stats option with another command");
                require(!(o.json && o.prometheus), "two output formats accepted");
                require((o.create.mode & 0600) == 0600 && o.create.mode <= 0777,
                        "a --mode the owner cannot use was accepted");
        }
        free(o.pairs);
        free(argv);
        free(buf);
        return 0;
}
