/* dyncoord.c - the command-line interface (being built). */
#include <stdio.h>
int main(void)
{
        fprintf(stderr, "dyncoord: not built yet\n");
        return 2;
}
