/*
 * execl(3), execlp(3) and execle(3), which take their arguments as a variadic list that stable
 * Rust cannot receive. Each collects the list into an array on the stack and calls the library's
 * execv, execvp or execve wrapper, so the child gets references in place of resolved values.
 *
 * No memory is allocated: POSIX lists execle as async-signal-safe, and a threaded program may
 * call these between fork and exec, where malloc can deadlock. As in glibc, the arguments are
 * counted first and collected into a stack array (a VLA) of exactly that size. More than
 * ARG_MAX / sizeof(char *) arguments fail with E2BIG, as execve would fail for them, because
 * their pointers alone exceed ARG_MAX. That bounds the array to ARG_MAX bytes, which glibc
 * derives as a quarter of the stack size limit (at least 128 KiB).
 *
 * NOTE: a thread whose stack is smaller than ARG_MAX bytes plus its own use can overflow it with
 * that many arguments, as it would with glibc's own execl.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

/*
 * The kernel's largest limit for the arguments and environment, whatever the stack size limit:
 * three quarters of its 8 MiB _STK_LIM (Linux 4.13 and later).
 */
#define ENVPROXY_KERNEL_ARG_MAX (6L * 1024 * 1024)

/*
 * The Rust wrappers, under names that stay inside the library: a hidden symbol is bound at link
 * time, so these calls go through no PLT entry and cannot reach another library's definition.
 */
#define ENVPROXY_INTERNAL __attribute__((visibility("hidden")))
ENVPROXY_INTERNAL int envproxy_execv(const char *path, char *const argv[]);
ENVPROXY_INTERNAL int envproxy_execvp(const char *file, char *const argv[]);
ENVPROXY_INTERNAL int envproxy_execve(const char *path, char *const argv[], char *const envp[]);

/* Returns the maximum number of arguments that execve could accept: ARG_MAX / sizeof(char *). sysconf reads
 * the stack size limit with one system call and allocates nothing. */
static long max_list_args(void)
{
    long arg_max = sysconf(_SC_ARG_MAX);
    if (arg_max <= 0 || arg_max > ENVPROXY_KERNEL_ARG_MAX)
        arg_max = ENVPROXY_KERNEL_ARG_MAX;
    return arg_max / (long)sizeof(char *);
}

/* Returns the number of arguments from arg0 up to the terminating NULL, without the NULL, or
 * -1 when there are more than max_list_args(). */
static long count_args(const char *arg0, va_list list)
{
    long max = max_list_args();
    long count = 0;
    const char *arg = arg0;
    while (arg != NULL) {
        if (count == max)
            return -1;
        count++;
        arg = va_arg(list, const char *);
    }
    return count;
}

/* Fills argv[0..count] from arg0 and the list, with argv[count] = NULL. */
static void fill_args(const char **argv, long count, const char *arg0, va_list list)
{
    argv[0] = arg0;
    for (long i = 1; i < count; i++)
        argv[i] = va_arg(list, const char *);
    argv[count] = NULL;
}

ENVPROXY_INTERNAL int envproxy_execl(const char *path, const char *arg0, ...)
{
    va_list list;
    va_start(list, arg0);
    long count = count_args(arg0, list);
    va_end(list);
    if (count < 0) {
        errno = E2BIG;
        return -1;
    }
    const char *argv[count + 1];
    va_start(list, arg0);
    fill_args(argv, count, arg0, list);
    va_end(list);
    return envproxy_execv(path, (char *const *)argv);
}

ENVPROXY_INTERNAL int envproxy_execlp(const char *file, const char *arg0, ...)
{
    va_list list;
    va_start(list, arg0);
    long count = count_args(arg0, list);
    va_end(list);
    if (count < 0) {
        errno = E2BIG;
        return -1;
    }
    const char *argv[count + 1];
    va_start(list, arg0);
    fill_args(argv, count, arg0, list);
    va_end(list);
    return envproxy_execvp(file, (char *const *)argv);
}

/* The environment array follows the NULL that ends the arguments. */
ENVPROXY_INTERNAL int envproxy_execle(const char *path, const char *arg0, ...)
{
    va_list list;
    va_start(list, arg0);
    long count = count_args(arg0, list);
    char *const *envp = count < 0 ? NULL : va_arg(list, char *const *);
    va_end(list);
    if (count < 0) {
        errno = E2BIG;
        return -1;
    }
    const char *argv[count + 1];
    va_start(list, arg0);
    fill_args(argv, count, arg0, list);
    va_end(list);
    return envproxy_execve(path, (char *const *)argv, envp);
}
