/* Test program for the library's end-to-end tests. It prints values: the tests give it
 * random per-test secrets, never real ones.
 *
 *   probe get NAME...              print NAME=VALUE (or NAME=(null)) per name
 *   probe secure NAME              the same through secure_getenv
 *   probe wait NAME                print the value and the pid, then block until stdin closes
 *   probe loop NAME MS COUNT       print the value every MS milliseconds, COUNT times
 *   probe threads NAME EXPECTED N  N threads call getenv 10000 times each; print "ok" or the
 *                                  number of mismatches
 *   probe fork NAME EXPECTED N     N forked children each resolve NAME; print how many matched
 *   probe execve NAME              resolve NAME, then execve /usr/bin/env with a copy of the
 *                                  environment holding the value under NAME and RENAMED
 *   probe spawn NAME               the same through posix_spawn
 *   probe execl NAME [ARG...]      resolve NAME, copy the value into the environment under NAME
 *                                  and RENAMED with setenv, then execl /usr/bin/env with up to
 *                                  four ARGs (no ARG: env prints the environment)
 *   probe execlp NAME [ARG...]     the same through execlp("env", ...)
 *   probe execle NAME [ARG...]     the same through execle with a copy of the environment
 *                                  holding the value under NAME and RENAMED
 *   probe minimal NAME             resolve NAME, then execve /usr/bin/env with only
 *                                  COPY=VALUE as its environment
 *   probe forkthreads NAME EXPECTED N
 *                                  4 threads call getenv in a loop while the main thread forks
 *                                  N children that each resolve NAME under a 5 s alarm; print
 *                                  how many matched and how many hung
 *   probe serve                    for each name read from stdin, print NAME=VALUE and the
 *                                  milliseconds getenv took as "ms=N"
 *   probe closefds-socketpair NAME resolve NAME, close descriptors 3 to 63 as a daemon does,
 *                                  open a socketpair (which gets fd 3) and resolve NAME again.
 *                                  Print the value, "ms=N" and the pair's first descriptor as
 *                                  "fd=N". Print "untouched=1" when the pair carried no bytes
 *                                  and still works, otherwise "untouched=0" and the reason.
 *   probe closefds-file NAME PATH  the same with PATH created at fd 3 instead; print
 *                                  "untouched=1" when fd 3 is still that file and writable
 *   probe dup2 NAME                resolve NAME, dup2 one end of a socketpair over every other
 *                                  socket descriptor from 3 to 63 (the library's connection),
 *                                  print how many as "replaced=N", resolve NAME again and
 *                                  print as closefds-socketpair does
 *   probe dup3 NAME                the same through dup3 with O_CLOEXEC
 *   probe close_range NAME         as closefds-socketpair, closing with close_range(3, ~0U, 0)
 *   probe closefrom NAME           as closefds-socketpair, closing with closefrom(3)
 *   probe rawclose-file NAME PATH  as closefds-file, closing every socket from 3 to 63 with a
 *                                  raw close system call, which the library cannot intercept
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Returns a copy of environ with NAME and RENAMED set to VALUE, as a program that copies its
 * resolved environment for a child would build it. */
static char **copied_environment(const char *name, const char *value) {
    size_t count = 0;
    while (environ[count] != NULL) count++;
    char **copy = calloc(count + 3, sizeof *copy);
    size_t used = 0;
    size_t name_len = strlen(name);
    for (size_t i = 0; i < count; i++) {
        if (strncmp(environ[i], name, name_len) == 0 && environ[i][name_len] == '=') continue;
        copy[used++] = environ[i];
    }
    char *own = malloc(name_len + strlen(value) + 2);
    sprintf(own, "%s=%s", name, value);
    char *renamed = malloc(strlen(value) + 9);
    sprintf(renamed, "RENAMED=%s", value);
    copy[used++] = own;
    copy[used++] = renamed;
    copy[used] = NULL;
    return copy;
}

static volatile int stop_threads = 0;

static void *hammer_main(void *raw) {
    const char *name = raw;
    while (!stop_threads) {
        getenv(name);
    }
    return NULL;
}

static const char *show(const char *value) { return value ? value : "(null)"; }

/* Calls getenv(NAME) and prints NAME=VALUE and the milliseconds it took as "ms=N". */
static void timed_getenv(const char *name) {
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    const char *value = getenv(name);
    clock_gettime(CLOCK_MONOTONIC, &end);
    long ms = (end.tv_sec - start.tv_sec) * 1000 + (end.tv_nsec - start.tv_nsec) / 1000000;
    printf("%s=%s\nms=%ld\n", name, show(value), ms);
}

static void close_descriptors_from_3(void) {
    for (int fd = 3; fd < 64; fd++) close(fd);
}

static int is_socket(int fd);

/* Closes every socket from 3 to 63 with the close system call itself, bypassing libc's close
 * and so any interposed one. */
static void raw_close_sockets_from_3(void) {
    for (int fd = 3; fd < 64; fd++) {
        if (is_socket(fd)) syscall(SYS_close, fd);
    }
}

static int is_socket(int fd) {
    struct stat status;
    return fstat(fd, &status) == 0 && S_ISSOCK(status.st_mode);
}

/* Prints "untouched=1" when no bytes wait on either end of the socketpair and a message sent
 * on pair[1] arrives unchanged on every descriptor in ends (all of which refer to pair[0]),
 * otherwise "untouched=0" and the reason. */
static void check_socketpair(const int pair[2], const int *ends, int count) {
    for (int i = 0; i < count + 1; i++) {
        int fd = i < count ? ends[i] : pair[1];
        struct pollfd waiting = {fd, POLLIN, 0};
        if (fcntl(fd, F_GETFD) < 0) {
            printf("untouched=0\nreason=fd %d was closed\n", fd);
            return;
        }
        if (poll(&waiting, 1, 0) != 0) {
            printf("untouched=0\nreason=bytes are waiting on fd %d\n", fd);
            return;
        }
    }
    for (int i = 0; i < count; i++) {
        char buffer[16] = {0};
        if (send(pair[1], "ping", 4, 0) != 4 || recv(ends[i], buffer, sizeof buffer, MSG_DONTWAIT) != 4 ||
            memcmp(buffer, "ping", 4) != 0) {
            printf("untouched=0\nreason=fd %d no longer carries the pair's messages\n", ends[i]);
            return;
        }
    }
    printf("untouched=1\n");
}

struct thread_args {
    const char *name;
    const char *expected;
    int mismatches;
};

static void *thread_main(void *raw) {
    struct thread_args *args = raw;
    for (int i = 0; i < 10000; i++) {
        const char *value = getenv(args->name);
        if (value == NULL || strcmp(value, args->expected) != 0) {
            args->mismatches++;
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 2 && strcmp(argv[1], "serve") == 0) {
        char line[4096];
        while (fgets(line, sizeof line, stdin) != NULL) {
            line[strcspn(line, "\n")] = '\0';
            struct timespec start, end;
            clock_gettime(CLOCK_MONOTONIC, &start);
            const char *value = getenv(line);
            clock_gettime(CLOCK_MONOTONIC, &end);
            long ms = (end.tv_sec - start.tv_sec) * 1000 + (end.tv_nsec - start.tv_nsec) / 1000000;
            printf("%s=%s\nms=%ld\n", line, show(value), ms);
        }
        return 0;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: probe MODE NAME...\n");
        return 2;
    }
    const char *mode = argv[1];
    const char *name = argv[2];

    if (strcmp(mode, "get") == 0) {
        for (int i = 2; i < argc; i++) {
            printf("%s=%s\n", argv[i], show(getenv(argv[i])));
        }
        return 0;
    }
    if (strcmp(mode, "secure") == 0) {
        printf("%s=%s\n", name, show(secure_getenv(name)));
        return 0;
    }
    if (strcmp(mode, "execve") == 0 || strcmp(mode, "spawn") == 0) {
        const char *value = getenv(name);
        if (value == NULL) return 3;
        char **child_env = copied_environment(name, value);
        char *child_argv[] = {"/usr/bin/env", NULL};
        if (strcmp(mode, "execve") == 0) {
            execve("/usr/bin/env", child_argv, child_env);
            perror("execve");
            return 4;
        }
        pid_t child;
        if (posix_spawn(&child, "/usr/bin/env", NULL, NULL, child_argv, child_env) != 0) return 4;
        int status = 0;
        waitpid(child, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 5;
    }
    if (strcmp(mode, "execl") == 0 || strcmp(mode, "execlp") == 0 ||
        strcmp(mode, "execle") == 0) {
        const char *value = getenv(name);
        if (value == NULL) return 3;
        /* The ARGs in fixed positions, because a variadic call lists them in the source. The
         * first NULL ends the list. */
        const char *extra[4] = {NULL, NULL, NULL, NULL};
        for (int i = 3; i < argc && i < 7; i++) extra[i - 3] = argv[i];
        if (strcmp(mode, "execle") == 0) {
            /* The environment follows the first NULL, so each count of ARGs has its own call. */
            char **child_env = copied_environment(name, value);
            if (extra[0] == NULL) {
                execle("/usr/bin/env", "env", (char *)NULL, child_env);
            } else if (extra[1] == NULL) {
                execle("/usr/bin/env", "env", extra[0], (char *)NULL, child_env);
            } else if (extra[2] == NULL) {
                execle("/usr/bin/env", "env", extra[0], extra[1], (char *)NULL, child_env);
            } else if (extra[3] == NULL) {
                execle("/usr/bin/env", "env", extra[0], extra[1], extra[2], (char *)NULL,
                       child_env);
            } else {
                execle("/usr/bin/env", "env", extra[0], extra[1], extra[2], extra[3],
                       (char *)NULL, child_env);
            }
        } else {
            char *copy = strdup(value);
            setenv(name, copy, 1);
            setenv("RENAMED", copy, 1);
            if (strcmp(mode, "execl") == 0) {
                execl("/usr/bin/env", "env", extra[0], extra[1], extra[2], extra[3], (char *)NULL);
            } else {
                execlp("env", "env", extra[0], extra[1], extra[2], extra[3], (char *)NULL);
            }
        }
        perror(mode);
        return 4;
    }
    if (strcmp(mode, "minimal") == 0) {
        const char *value = getenv(name);
        if (value == NULL) return 3;
        char *copy = malloc(strlen(value) + 6);
        sprintf(copy, "COPY=%s", value);
        char *child_env[] = {copy, NULL};
        char *child_argv[] = {"/usr/bin/env", NULL};
        execve("/usr/bin/env", child_argv, child_env);
        perror("execve");
        return 4;
    }
    if (strcmp(mode, "forkthreads") == 0 && argc == 5) {
        int count = atoi(argv[4]);
        pthread_t threads[4];
        for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, hammer_main, (void *)name);
        int matched = 0, hung = 0;
        for (int i = 0; i < count; i++) {
            pid_t child = fork();
            if (child == 0) {
                alarm(5);
                const char *value = getenv(name);
                _exit(value != NULL && strcmp(value, argv[3]) == 0 ? 0 : 1);
            }
            int status = 0;
            waitpid(child, &status, 0);
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0) matched++;
            if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) hung++;
        }
        stop_threads = 1;
        for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);
        printf("matched=%d\nhung=%d\n", matched, hung);
        return 0;
    }
    if (strcmp(mode, "closefds-socketpair") == 0) {
        getenv(name);
        close_descriptors_from_3();
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) return 4;
        printf("fd=%d\n", pair[0]);
        timed_getenv(name);
        check_socketpair(pair, &pair[0], 1);
        return 0;
    }
    if (strcmp(mode, "close_range") == 0 || strcmp(mode, "closefrom") == 0) {
        getenv(name);
        if (strcmp(mode, "close_range") == 0) {
            if (close_range(3, ~0U, 0) != 0) return 4;
        } else {
            closefrom(3);
        }
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) return 4;
        printf("fd=%d\n", pair[0]);
        timed_getenv(name);
        check_socketpair(pair, &pair[0], 1);
        return 0;
    }
    if ((strcmp(mode, "closefds-file") == 0 || strcmp(mode, "rawclose-file") == 0) && argc == 4) {
        getenv(name);
        if (strcmp(mode, "closefds-file") == 0) {
            close_descriptors_from_3();
        } else {
            raw_close_sockets_from_3();
        }
        int fd = open(argv[3], O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) return 4;
        printf("fd=%d\n", fd);
        timed_getenv(name);
        struct stat status;
        if (fstat(fd, &status) != 0 || !S_ISREG(status.st_mode)) {
            printf("untouched=0\nreason=fd %d is no longer the file\n", fd);
        } else if (write(fd, "kept\n", 5) != 5) {
            printf("untouched=0\nreason=writing to fd %d failed\n", fd);
        } else {
            printf("untouched=1\n");
        }
        return 0;
    }
    if (strcmp(mode, "dup2") == 0 || strcmp(mode, "dup3") == 0) {
        getenv(name);
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) return 4;
        int replaced[64];
        int count = 0;
        for (int fd = 3; fd < 64; fd++) {
            if (fd == pair[0] || fd == pair[1] || !is_socket(fd)) continue;
            int copy = strcmp(mode, "dup2") == 0 ? dup2(pair[0], fd) : dup3(pair[0], fd, O_CLOEXEC);
            if (copy != fd) return 4;
            replaced[count++] = fd;
        }
        printf("replaced=%d\n", count);
        timed_getenv(name);
        check_socketpair(pair, replaced, count);
        return 0;
    }
    if (strcmp(mode, "wait") == 0) {
        printf("%s=%s\n", name, show(getenv(name)));
        printf("pid=%d\n", (int)getpid());
        char buffer[64];
        while (fread(buffer, 1, sizeof buffer, stdin) > 0) {
        }
        return 0;
    }
    if (strcmp(mode, "loop") == 0 && argc == 5) {
        int interval_ms = atoi(argv[3]);
        int count = atoi(argv[4]);
        for (int i = 0; i < count; i++) {
            printf("%s=%s\n", name, show(getenv(name)));
            struct timespec pause = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
            nanosleep(&pause, NULL);
        }
        return 0;
    }
    if (strcmp(mode, "threads") == 0 && argc == 5) {
        int count = atoi(argv[4]);
        pthread_t threads[64];
        struct thread_args args[64];
        if (count > 64) count = 64;
        for (int i = 0; i < count; i++) {
            args[i] = (struct thread_args){name, argv[3], 0};
            pthread_create(&threads[i], NULL, thread_main, &args[i]);
        }
        int mismatches = 0;
        for (int i = 0; i < count; i++) {
            pthread_join(threads[i], NULL);
            mismatches += args[i].mismatches;
        }
        if (mismatches == 0) {
            printf("ok\n");
        } else {
            printf("mismatches=%d\n", mismatches);
        }
        return 0;
    }
    if (strcmp(mode, "fork") == 0 && argc == 5) {
        int count = atoi(argv[4]);
        /* Resolve once in the parent so children inherit a warm cache and a connection. */
        getenv(name);
        int matched = 0;
        for (int i = 0; i < count; i++) {
            pid_t child = fork();
            if (child == 0) {
                const char *value = getenv(name);
                _exit(value != NULL && strcmp(value, argv[3]) == 0 ? 0 : 1);
            }
            int status = 0;
            waitpid(child, &status, 0);
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0) matched++;
        }
        printf("matched=%d\n", matched);
        return 0;
    }
    fprintf(stderr, "probe: unknown mode %s\n", mode);
    return 2;
}
