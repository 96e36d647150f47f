/*
 * execl(3), execlp(3) and execle(3), which take their arguments as a variadic list that stable
 * Rust cannot receive. Each collects the list into an array on the stack and calls the library's
 * execv, execvp or execve wrapper, so the child gets references in place of resolved values.
 *
 * No memory is allocated: POSIX lists execle as async-signal-safe, and a threaded program may
 * call these between fork and exec, where malloc can deadlock. The array has exactly the
 * arguments given (counted first, as glibc does); more than ENVPROXY_MAX_LIST_ARGS fail with
 * E2BIG, which bounds the stack used.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>

#define ENVPROXY_MAX_LIST_ARGS 4096

/*
 * The Rust wrappers, under names that stay inside the library: a hidden symbol is bound at link
 * time, so these calls go through no PLT entry and cannot reach another library's definition.
 */
#define ENVPROXY_INTERNAL __attribute__((visibility("hidden")))
ENVPROXY_INTERNAL int envproxy_execv(const char *path, char *const argv[]);
ENVPROXY_INTERNAL int envproxy_execvp(const char *file, char *const argv[]);
ENVPROXY_INTERNAL int envproxy_execve(const char *path, char *const argv[], char *const envp[]);

/* Returns the number of arguments from arg0 up to the terminating NULL, without the NULL, or
 * -1 when there are more than ENVPROXY_MAX_LIST_ARGS. */
static int count_args(const char *arg0, va_list list)
{
    int count = 0;
    const char *arg = arg0;
    while (arg != NULL) {
        if (count == ENVPROXY_MAX_LIST_ARGS)
            return -1;
        count++;
        arg = va_arg(list, const char *);
    }
    return count;
}

/* Fills argv[0..count] from arg0 and the list, with argv[count] = NULL. */
static void fill_args(const char **argv, int count, const char *arg0, va_list list)
{
    argv[0] = arg0;
    for (int i = 1; i < count; i++)
        argv[i] = va_arg(list, const char *);
    argv[count] = NULL;
}

ENVPROXY_INTERNAL int envproxy_execl(const char *path, const char *arg0, ...)
{
    va_list list;
    va_start(list, arg0);
    int count = count_args(arg0, list);
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
    int count = count_args(arg0, list);
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
    int count = count_args(arg0, list);
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
