/* static_program.c - linked statically: the dynamic loader never runs, so
 * LD_PRELOAD has no effect on it. Lives 0.8 s. */
#include <time.h>

int main(void)
{
        struct timespec ts = {0, 800000000L};
        nanosleep(&ts, 0);
        return 0;
}
