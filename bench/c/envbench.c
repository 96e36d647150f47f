/*
 * envbench: the C client of the EnvProxy benchmarks.
 *
 * The same binary runs with and without libenvproxy.so in LD_PRELOAD, so the two figures of a
 * benchmark differ only by the library (and the agent behind it). Each mode prints its results
 * as `key=value` lines on stdout. Errors go to stderr and end the program with status 1.
 *
 *   envbench loop NAME EXPECTED COUNT
 *       Calls getenv(NAME) COUNT times in a tight loop and prints the mean cost per call.
 *   envbench round-trip SOCKET NAME EXPECTED COUNT
 *       COUNT times, times one getenv(NAME) and then one round trip of the v2 request that the
 *       library sends for NAME (key NAME, value the reference in `environ`) to the server at
 *       SOCKET, over one persistent connection. Prints the percentiles of both.
 *   envbench memory COUNT THREADS NAME=EXPECTED...
 *       Calls getenv on the names in turn from THREADS threads, COUNT calls in all, and prints
 *       the resident and the anonymous memory after a warm-up and after the COUNT calls.
 *   envbench first-request SOCKET BASELINE_SOCKET NAME EXPECTED COUNT
 *       COUNT times, opens a new connection to each server in turn, sends the v2 request for
 *       NAME and reads the response, and times connect plus that first round trip. Prints the
 *       percentiles of both servers as `with_*` and `baseline_*`.
 *   envbench later-requests SOCKET BASELINE_SOCKET NAME EXPECTED COUNT
 *       Opens one connection to each server and, COUNT times, times one round trip of the v2
 *       request for NAME on each in turn. Prints percentiles as first-request does.
 *   envbench get NAME EXPECTED
 *       Calls getenv(NAME) once and prints `resolved=1`.
 *
 * EXPECTED is the value getenv must return. The first and the last result of each loop are
 * compared with it, and so is every result in the round-trip, first-request, later-requests
 * and get modes. A run in which the library passed
 * a reference through unresolved therefore fails instead of reporting the cost of that path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Untimed calls before any measurement, which resolve lazy symbols, open the connection to
 * the agent and fill the caches. */
#define WARM_UP_CALLS 1000

static void fail(const char *message) {
    fprintf(stderr, "envbench: %s\n", message);
    exit(1);
}

static void fail_errno(const char *operation) {
    fprintf(stderr, "envbench: %s: %s\n", operation, strerror(errno));
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static long parse_count(const char *text) {
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value <= 0) {
        fprintf(stderr, "envbench: invalid count %s: expected a positive whole number\n", text);
        exit(1);
    }
    return value;
}

static int is_reference(const char *value) {
    return strncmp(value, "envproxy:", 9) == 0 || strncmp(value, "vault:", 6) == 0;
}

/* Fails unless getenv(name) returned `expected`. The message gives lengths, never the value,
 * because a wrong value may still be a secret. */
static void check_value(const char *name, const char *value, const char *expected) {
    if (value == NULL) {
        fprintf(stderr, "envbench: getenv(%s) returned NULL, expected a value\n", name);
        exit(1);
    }
    if (strcmp(value, expected) != 0) {
        fprintf(stderr,
                "envbench: getenv(%s) returned %zu bytes that differ from the expected %zu "
                "bytes%s\n",
                name, strlen(value), strlen(expected),
                is_reference(value) ? " (the reference itself, unresolved)" : "");
        exit(1);
    }
}

/* Prints the 1-based position of `name` in `environ` and the number of variables. libc's
 * getenv compares the entries in order, so the position sets the cost of a plain call. */
static void print_position(const char *name) {
    extern char **environ;
    size_t name_len = strlen(name);
    long position = 0;
    long total = 0;
    for (char **entry = environ; *entry != NULL; entry++) {
        total++;
        if (position == 0 && strncmp(*entry, name, name_len) == 0 && (*entry)[name_len] == '=') {
            position = total;
        }
    }
    printf("position=%ld\n", position);
    printf("variables=%ld\n", total);
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Sorts the samples and prints their nearest-rank percentiles in nanoseconds, each key
 * starting with `prefix`. */
static void print_percentiles(const char *prefix, uint64_t *samples, long count) {
    qsort(samples, (size_t)count, sizeof samples[0], compare_u64);
    uint64_t total = 0;
    for (long i = 0; i < count; i++) {
        total += samples[i];
    }
    long p50 = (count * 50 + 99) / 100 - 1;
    long p99 = (count * 99 + 99) / 100 - 1;
    printf("%s_p50_ns=%llu\n", prefix, (unsigned long long)samples[p50]);
    printf("%s_p99_ns=%llu\n", prefix, (unsigned long long)samples[p99]);
    printf("%s_max_ns=%llu\n", prefix, (unsigned long long)samples[count - 1]);
    printf("%s_mean_ns=%.1f\n", prefix, (double)total / (double)count);
}

static int run_loop(const char *name, const char *expected, long count) {
    for (int i = 0; i < WARM_UP_CALLS; i++) {
        check_value(name, getenv(name), expected);
    }
    /* Summing the pointers keeps every call's result live without a store per call. */
    uintptr_t sum = 0;
    const char *first = getenv(name);
    uint64_t started = now_ns();
    for (long i = 0; i < count; i++) {
        sum += (uintptr_t)getenv(name);
    }
    uint64_t elapsed = now_ns() - started;
    const char *last = getenv(name);
    check_value(name, first, expected);
    check_value(name, last, expected);
    printf("calls=%ld\n", count);
    print_position(name);
    printf("ns_per_call=%.3f\n", (double)elapsed / (double)count);
    printf("checksum=%llu\n", (unsigned long long)(sum & 0xffff));
    return 0;
}

static void write_all(int fd, const unsigned char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            fail_errno("send to the server failed");
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void read_exact(int fd, unsigned char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n == 0) {
            fail("the server closed the connection before a whole response");
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            fail_errno("recv from the server failed");
        }
        buf += n;
        len -= (size_t)n;
    }
}

/* One request and one whole response: a 3-byte header `[status][u16 len]`, then the
 * payload. Returns the payload length. */
static size_t round_trip(int fd, const unsigned char *frame, size_t frame_len,
                         unsigned char *reply, size_t reply_cap) {
    write_all(fd, frame, frame_len);
    unsigned char header[3];
    read_exact(fd, header, sizeof header);
    size_t len = ((size_t)header[1] << 8) | header[2];
    if (len > reply_cap) {
        fail("the server sent a payload larger than a response allows");
    }
    read_exact(fd, reply, len);
    if (header[0] == 2) {
        /* An error payload is a reason that the agent writes without secret material. */
        fprintf(stderr, "envbench: the server replied with an error: %.*s\n", (int)len,
                (const char *)reply);
        exit(1);
    }
    if (header[0] != 0) {
        fprintf(stderr, "envbench: the server replied with status %u, expected 0\n",
                header[0]);
        exit(1);
    }
    return len;
}

/* Returns the value of `name` as stored in `environ`, without calling getenv, so that the
 * library cannot replace a reference with its value. */
static const char *environ_value(const char *name) {
    extern char **environ;
    size_t name_len = strlen(name);
    for (char **entry = environ; *entry != NULL; entry++) {
        if (strncmp(*entry, name, name_len) == 0 && (*entry)[name_len] == '=') {
            return *entry + name_len + 1;
        }
    }
    fprintf(stderr, "envbench: %s is not set\n", name);
    exit(1);
}

/* Encodes the v2 request `[u8 2][u16 key_len][key][u16 value_len][value]`, big-endian. */
static unsigned char *encode_request(const char *name, const char *value, size_t *frame_len) {
    size_t name_len = strlen(name);
    size_t value_len = strlen(value);
    if (name_len == 0 || name_len > 4096 || value_len > 16384) {
        fail("the name or value does not fit in a v2 request");
    }
    *frame_len = 1 + 2 + name_len + 2 + value_len;
    unsigned char *frame = malloc(*frame_len);
    if (frame == NULL) {
        fail("out of memory for the request frame");
    }
    frame[0] = 2;
    frame[1] = (unsigned char)(name_len >> 8);
    frame[2] = (unsigned char)name_len;
    memcpy(frame + 3, name, name_len);
    frame[3 + name_len] = (unsigned char)(value_len >> 8);
    frame[4 + name_len] = (unsigned char)value_len;
    memcpy(frame + 5 + name_len, value, value_len);
    return frame;
}

static int connect_unix(const char *socket_path) {
    struct sockaddr_un address;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    if (strlen(socket_path) >= sizeof address.sun_path) {
        fail("the socket path is longer than a Unix socket address allows");
    }
    strcpy(address.sun_path, socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail_errno("socket failed");
    }
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        fprintf(stderr, "envbench: connect to %s failed: %s\n", socket_path, strerror(errno));
        exit(1);
    }
    return fd;
}

/* Alternates a getenv(NAME) and a bare round trip of the same request frame to the server at
 * `socket_path`, timing each. Interleaving puts both under the same conditions, because on a
 * virtual machine the cost of waking an idle CPU changes over time and dominates both. */
static int run_round_trip(const char *socket_path, const char *name, const char *expected,
                          long count) {
    size_t frame_len = 0;
    unsigned char *frame = encode_request(name, environ_value(name), &frame_len);
    int fd = connect_unix(socket_path);
    static unsigned char reply[65535];

    for (int i = 0; i < WARM_UP_CALLS; i++) {
        check_value(name, getenv(name), expected);
        round_trip(fd, frame, frame_len, reply, sizeof reply);
    }
    uint64_t *getenv_samples = calloc((size_t)count, sizeof *getenv_samples);
    uint64_t *echo_samples = calloc((size_t)count, sizeof *echo_samples);
    if (getenv_samples == NULL || echo_samples == NULL) {
        fail("out of memory for the latency samples");
    }
    size_t reply_len = 0;
    for (long i = 0; i < count; i++) {
        uint64_t started = now_ns();
        const char *value = getenv(name);
        uint64_t between = now_ns();
        reply_len = round_trip(fd, frame, frame_len, reply, sizeof reply);
        echo_samples[i] = now_ns() - between;
        getenv_samples[i] = between - started;
        check_value(name, value, expected);
    }
    close(fd);

    printf("count=%ld\n", count);
    printf("request_bytes=%zu\n", frame_len);
    printf("reply_payload_bytes=%zu\n", reply_len);
    print_percentiles("getenv", getenv_samples, count);
    print_percentiles("echo", echo_samples, count);
    free(getenv_samples);
    free(echo_samples);
    free(frame);
    return 0;
}

/* Fails unless a response payload equals `expected`. Like check_value, it gives lengths only. */
static void check_payload(const char *name, const unsigned char *payload, size_t len,
                          const char *expected) {
    size_t expected_len = strlen(expected);
    if (len != expected_len || memcmp(payload, expected, len) != 0) {
        fprintf(stderr,
                "envbench: the response for %s has %zu bytes that differ from the expected %zu "
                "bytes\n",
                name, len, expected_len);
        exit(1);
    }
}

/* Untimed new connections per server before first-request mode measures, which let both
 * agents fill their caches and open their Vault sessions. */
#define WARM_UP_CONNECTIONS 20

/* Connects to `socket_path`, sends one request and reads its response, and returns the time
 * from before connect(2) to the end of the response. The close(2) is not timed. */
static uint64_t timed_first_request(const char *socket_path, const char *name,
                                    const unsigned char *frame, size_t frame_len,
                                    const char *expected) {
    static unsigned char reply[65535];
    uint64_t started = now_ns();
    int fd = connect_unix(socket_path);
    size_t len = round_trip(fd, frame, frame_len, reply, sizeof reply);
    uint64_t elapsed = now_ns() - started;
    close(fd);
    check_payload(name, reply, len, expected);
    return elapsed;
}

/* Times the first request on new connections to the server at `socket_path` and to the one at
 * `baseline_path`. The server that goes first alternates from one iteration to the next. */
static int run_first_request(const char *socket_path, const char *baseline_path,
                             const char *name, const char *expected, long count) {
    size_t frame_len = 0;
    unsigned char *frame = encode_request(name, environ_value(name), &frame_len);
    for (int i = 0; i < WARM_UP_CONNECTIONS; i++) {
        timed_first_request(socket_path, name, frame, frame_len, expected);
        timed_first_request(baseline_path, name, frame, frame_len, expected);
    }
    uint64_t *with_samples = calloc((size_t)count, sizeof *with_samples);
    uint64_t *baseline_samples = calloc((size_t)count, sizeof *baseline_samples);
    if (with_samples == NULL || baseline_samples == NULL) {
        fail("out of memory for the latency samples");
    }
    for (long i = 0; i < count; i++) {
        if (i % 2 == 0) {
            with_samples[i] = timed_first_request(socket_path, name, frame, frame_len, expected);
            baseline_samples[i] =
                timed_first_request(baseline_path, name, frame, frame_len, expected);
        } else {
            baseline_samples[i] =
                timed_first_request(baseline_path, name, frame, frame_len, expected);
            with_samples[i] = timed_first_request(socket_path, name, frame, frame_len, expected);
        }
    }
    printf("count=%ld\n", count);
    printf("request_bytes=%zu\n", frame_len);
    print_percentiles("with", with_samples, count);
    print_percentiles("baseline", baseline_samples, count);
    free(with_samples);
    free(baseline_samples);
    free(frame);
    return 0;
}

/* Times one round trip on the open connection `fd` and checks the response. */
static uint64_t timed_round_trip(int fd, const char *name, const unsigned char *frame,
                                 size_t frame_len, const char *expected) {
    static unsigned char reply[65535];
    uint64_t started = now_ns();
    size_t len = round_trip(fd, frame, frame_len, reply, sizeof reply);
    uint64_t elapsed = now_ns() - started;
    check_payload(name, reply, len, expected);
    return elapsed;
}

/* Times requests after the first on one persistent connection to each server, alternating
 * the servers as run_first_request does. */
static int run_later_requests(const char *socket_path, const char *baseline_path,
                              const char *name, const char *expected, long count) {
    size_t frame_len = 0;
    unsigned char *frame = encode_request(name, environ_value(name), &frame_len);
    int with_fd = connect_unix(socket_path);
    int baseline_fd = connect_unix(baseline_path);
    for (int i = 0; i < WARM_UP_CALLS; i++) {
        timed_round_trip(with_fd, name, frame, frame_len, expected);
        timed_round_trip(baseline_fd, name, frame, frame_len, expected);
    }
    uint64_t *with_samples = calloc((size_t)count, sizeof *with_samples);
    uint64_t *baseline_samples = calloc((size_t)count, sizeof *baseline_samples);
    if (with_samples == NULL || baseline_samples == NULL) {
        fail("out of memory for the latency samples");
    }
    for (long i = 0; i < count; i++) {
        if (i % 2 == 0) {
            with_samples[i] = timed_round_trip(with_fd, name, frame, frame_len, expected);
            baseline_samples[i] = timed_round_trip(baseline_fd, name, frame, frame_len, expected);
        } else {
            baseline_samples[i] = timed_round_trip(baseline_fd, name, frame, frame_len, expected);
            with_samples[i] = timed_round_trip(with_fd, name, frame, frame_len, expected);
        }
    }
    close(with_fd);
    close(baseline_fd);
    printf("count=%ld\n", count);
    printf("request_bytes=%zu\n", frame_len);
    print_percentiles("with", with_samples, count);
    print_percentiles("baseline", baseline_samples, count);
    free(with_samples);
    free(baseline_samples);
    free(frame);
    return 0;
}

static int run_get(const char *name, const char *expected) {
    check_value(name, getenv(name), expected);
    printf("resolved=1\n");
    return 0;
}

/* Resident memory in bytes, from /proc/self/statm. `resident` counts all resident pages, and
 * `anonymous` counts resident minus shared pages, which leaves the heap and the stacks. The
 * file is read with open(2) and read(2) so that the measurement itself allocates nothing. */
struct resident {
    long resident;
    long anonymous;
};

static struct resident read_statm(void) {
    char text[256];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail_errno("open /proc/self/statm failed");
    }
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) {
        fail("read /proc/self/statm failed");
    }
    text[n] = '\0';
    long size_pages = 0;
    long resident_pages = 0;
    long shared_pages = 0;
    if (sscanf(text, "%ld %ld %ld", &size_pages, &resident_pages, &shared_pages) != 3) {
        fail("/proc/self/statm has an unexpected format");
    }
    long page = sysconf(_SC_PAGESIZE);
    return (struct resident){
        .resident = resident_pages * page,
        .anonymous = (resident_pages - shared_pages) * page,
    };
}

struct memory_worker {
    char **names;
    char **expected;
    int variables;
    long calls;
    /* The barrier of the workers and the main thread, passed after the warm-up, before the
     * measured calls, after them, and before the workers exit. */
    pthread_barrier_t *barrier;
};

static void *memory_worker_main(void *arg) {
    struct memory_worker *worker = arg;
    for (int i = 0; i < WARM_UP_CALLS; i++) {
        int v = i % worker->variables;
        check_value(worker->names[v], getenv(worker->names[v]), worker->expected[v]);
    }
    pthread_barrier_wait(worker->barrier);
    pthread_barrier_wait(worker->barrier);
    uintptr_t sum = 0;
    for (long i = 0; i < worker->calls; i++) {
        sum += (uintptr_t)getenv(worker->names[i % worker->variables]);
    }
    for (int v = 0; v < worker->variables; v++) {
        check_value(worker->names[v], getenv(worker->names[v]), worker->expected[v]);
    }
    /* The thread stays alive until the main thread has read the memory figures, so that
     * thread exit does not count. */
    pthread_barrier_wait(worker->barrier);
    pthread_barrier_wait(worker->barrier);
    return (void *)(sum & 1);
}

static int run_memory(long count, long threads, int variables, char **pairs) {
    if (threads > 64) {
        fail("invalid thread count: at most 64 threads");
    }
    char **names = calloc((size_t)variables, sizeof *names);
    char **expected = calloc((size_t)variables, sizeof *expected);
    if (names == NULL || expected == NULL) {
        fail("out of memory for the variable list");
    }
    for (int v = 0; v < variables; v++) {
        char *equals = strchr(pairs[v], '=');
        if (equals == NULL) {
            fprintf(stderr, "envbench: invalid argument %s: expected NAME=EXPECTED\n", pairs[v]);
            exit(1);
        }
        *equals = '\0';
        names[v] = pairs[v];
        expected[v] = equals + 1;
    }

    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)threads + 1);
    pthread_t ids[64];
    struct memory_worker workers[64];
    for (long t = 0; t < threads; t++) {
        workers[t] = (struct memory_worker){
            .names = names,
            .expected = expected,
            .variables = variables,
            .calls = count / threads + (t < count % threads ? 1 : 0),
            .barrier = &barrier,
        };
        errno = pthread_create(&ids[t], NULL, memory_worker_main, &workers[t]);
        if (errno != 0) {
            fail_errno("pthread_create failed");
        }
    }

    /* The main thread passes each barrier with the workers: first the warm-up ends, then the
     * measured calls start, end, and the workers may exit. */
    pthread_barrier_wait(&barrier);
    /* The first read pulls the code of sscanf and sysconf into memory; only the second
     * counts. */
    read_statm();
    struct resident before = read_statm();
    uint64_t started = now_ns();
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier);
    uint64_t elapsed = now_ns() - started;
    struct resident after = read_statm();
    pthread_barrier_wait(&barrier);
    for (long t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
    }

    printf("calls=%ld\n", count);
    printf("threads=%ld\n", threads);
    printf("references=%d\n", variables);
    printf("elapsed_ns=%llu\n", (unsigned long long)elapsed);
    printf("resident_before_bytes=%ld\n", before.resident);
    printf("resident_after_bytes=%ld\n", after.resident);
    printf("anonymous_before_bytes=%ld\n", before.anonymous);
    printf("anonymous_after_bytes=%ld\n", after.anonymous);
    free(names);
    free(expected);
    return 0;
}

static void usage(void) {
    fail("usage: envbench loop NAME EXPECTED COUNT | round-trip SOCKET NAME EXPECTED COUNT | "
         "memory COUNT THREADS NAME=EXPECTED... | "
         "first-request SOCKET BASELINE_SOCKET NAME EXPECTED COUNT | "
         "later-requests SOCKET BASELINE_SOCKET NAME EXPECTED COUNT | get NAME EXPECTED");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage();
    }
    const char *mode = argv[1];
    if (strcmp(mode, "loop") == 0 && argc == 5) {
        return run_loop(argv[2], argv[3], parse_count(argv[4]));
    }
    if (strcmp(mode, "round-trip") == 0 && argc == 6) {
        return run_round_trip(argv[2], argv[3], argv[4], parse_count(argv[5]));
    }
    if (strcmp(mode, "first-request") == 0 && argc == 7) {
        return run_first_request(argv[2], argv[3], argv[4], argv[5], parse_count(argv[6]));
    }
    if (strcmp(mode, "later-requests") == 0 && argc == 7) {
        return run_later_requests(argv[2], argv[3], argv[4], argv[5], parse_count(argv[6]));
    }
    if (strcmp(mode, "get") == 0 && argc == 4) {
        return run_get(argv[2], argv[3]);
    }
    if (strcmp(mode, "memory") == 0 && argc >= 5) {
        return run_memory(parse_count(argv[2]), parse_count(argv[3]), argc - 4, argv + 4);
    }
    usage();
    return 1;
}
