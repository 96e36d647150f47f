/* Test program for the musl build of the library, compiled with musl-gcc. It prints values:
 * the tests give it random per-test secrets, never real ones.
 *
 *   musl_reader NAME         print NAME=VALUE through getenv, environ=clean|leak (whether VALUE
 *                            is in /proc/self/environ), then execve itself as the child with a
 *                            copy of environ holding VALUE under NAME and RENAMED
 *   musl_reader NAME child   print child.NAME= through getenv, child.environ=, and
 *                            child.raw.NAME= and child.raw.RENAMED= as found in environ
 *   musl_reader -loop NAME   print NAME=VALUE every 50 ms, 200 times
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Returns the value of NAME in environ without calling getenv. */
static const char *raw_value(const char *name) {
    size_t len = strlen(name);
    for (char **entry = environ; *entry != NULL; entry++) {
        if (strncmp(*entry, name, len) == 0 && (*entry)[len] == '=') return *entry + len + 1;
    }
    return "(unset)";
}

static int in_own_environ(const char *value) {
    FILE *file = fopen("/proc/self/environ", "rb");
    if (file == NULL) return -1;
    static char buffer[1 << 20];
    size_t size = fread(buffer, 1, sizeof buffer, file);
    fclose(file);
    return memmem(buffer, size, value, strlen(value)) != NULL;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "-loop") == 0) {
        struct timespec pause = {0, 50 * 1000 * 1000};
        for (int i = 0; i < 200; i++) {
            const char *value = getenv(argv[2]);
            printf("%s=%s\n", argv[2], value ? value : "(null)");
            fflush(stdout);
            nanosleep(&pause, NULL);
        }
        return 0;
    }
    if (argc < 2) {
        fprintf(stderr, "usage: musl_reader [-loop] NAME [child]\n");
        return 2;
    }
    const char *name = argv[1];
    int child = argc == 3 && strcmp(argv[2], "child") == 0;
    const char *prefix = child ? "child." : "";
    const char *value = getenv(name);
    if (value == NULL) value = "(null)";
    const char *state = "clean";
    int found = in_own_environ(value);
    if (found < 0) state = "unreadable";
    if (found > 0) state = "leak";
    printf("%s%s=%s\n%senviron=%s\n", prefix, name, value, prefix, state);
    if (child) {
        printf("child.raw.%s=%s\nchild.raw.RENAMED=%s\n", name, raw_value(name),
               raw_value("RENAMED"));
        return 0;
    }
    fflush(stdout);

    size_t count = 0;
    while (environ[count] != NULL) count++;
    char **copy = calloc(count + 3, sizeof *copy);
    size_t used = 0;
    size_t len = strlen(name);
    for (size_t i = 0; i < count; i++) {
        if (strncmp(environ[i], name, len) == 0 && environ[i][len] == '=') continue;
        copy[used++] = environ[i];
    }
    if (asprintf(&copy[used++], "%s=%s", name, value) < 0) return 1;
    if (asprintf(&copy[used++], "RENAMED=%s", value) < 0) return 1;
    char *child_argv[] = {argv[0], (char *)name, "child", NULL};
    execve("/proc/self/exe", child_argv, copy);
    perror("execve");
    return 1;
}
