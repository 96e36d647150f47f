/*
 * Calls execl with /bin/true and 65537 arguments, more than fit a fixed array of 4096 or 65536.
 * With "small-stack", the stack size limit is first lowered to 1 MiB, which makes ARG_MAX
 * 256 KiB, so the 512 KiB of argument pointers exceed it. A lower limit would not leave room
 * for the call itself, which passes its 512 KiB of arguments on the stack. Prints
 * "execl=E2BIG" or the error when execl fails; /bin/true prints nothing when it succeeds.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define X1 "x"
#define X8 X1, X1, X1, X1, X1, X1, X1, X1
#define X64 X8, X8, X8, X8, X8, X8, X8, X8
#define X512 X64, X64, X64, X64, X64, X64, X64, X64
#define X4096 X512, X512, X512, X512, X512, X512, X512, X512
#define X32768 X4096, X4096, X4096, X4096, X4096, X4096, X4096, X4096

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "small-stack") == 0) {
        struct rlimit limit = {1024 * 1024, 1024 * 1024};
        if (setrlimit(RLIMIT_STACK, &limit) != 0) {
            printf("setrlimit=%s\n", strerror(errno));
            return 1;
        }
    }
    execl("/bin/true", X32768, X32768, X1, (char *)NULL);
    printf("execl=%s\n", errno == E2BIG ? "E2BIG" : strerror(errno));
    return 0;
}
