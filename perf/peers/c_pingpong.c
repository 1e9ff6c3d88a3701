/*
 * C parent for the pipe floor: spawns a child (argv after the counts), sends
 * one newline-terminated message, waits for one line back, repeats.
 *
 * Timing is taken here, in C, so that the Python harness contributes nothing
 * to the measured loop.  This is the machine's true round-trip floor.
 *
 * usage: c_pingpong CALLS WARMUP MESSAGE CHILD [ARGS...]
 * prints one JSON line: {"calls":N,"mean_ns":..,"p50_ns":..,"p90_ns":..,"p99_ns":..}
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Only one message is ever in flight, so a response can never share a read()
 * with the next one: reading until the first newline is sufficient. */
static int read_line(int fd, char *buf, size_t cap) {
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r == 0) return -1;
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        got += (size_t)r;
        if (memchr(buf + got - (size_t)r, '\n', (size_t)r)) return (int)got;
        if (got == cap) return -1;
    }
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s CALLS WARMUP MESSAGE CHILD [ARGS...]\n", argv[0]);
        return 2;
    }
    long calls = strtol(argv[1], NULL, 10);
    long warmup = strtol(argv[2], NULL, 10);
    if (calls <= 0 || warmup < 0) return 2;
    size_t mlen = strlen(argv[3]);
    char *msg = malloc(mlen + 2);
    memcpy(msg, argv[3], mlen);
    msg[mlen] = '\n';
    mlen += 1;

    int to_child[2], from_child[2];
    if (pipe(to_child) || pipe(from_child)) {
        perror("pipe");
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        dup2(to_child[0], 0);
        dup2(from_child[1], 1);
        close(to_child[0]);
        close(to_child[1]);
        close(from_child[0]);
        close(from_child[1]);
        execvp(argv[4], argv + 4);
        perror("execvp");
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    int wfd = to_child[1], rfd = from_child[0];

    static char buf[1 << 16];
    long long *t = malloc(sizeof(long long) * (size_t)calls);
    int rc = 0;
    for (long i = 0; i < warmup + calls; i++) {
        long long t0 = now_ns();
        if (write_all(wfd, msg, mlen) || read_line(rfd, buf, sizeof buf) < 0) {
            fprintf(stderr, "c_pingpong: child stopped answering at call %ld\n", i);
            rc = 1;
            break;
        }
        if (i >= warmup) t[i - warmup] = now_ns() - t0;
    }
    close(wfd); /* EOF tells the echo child to exit */
    close(rfd);
    int status = 0;
    waitpid(pid, &status, 0);
    if (rc) return rc;

    long long sum = 0;
    for (long i = 0; i < calls; i++) sum += t[i];
    qsort(t, (size_t)calls, sizeof(long long), cmp_ll);
    printf("{\"calls\":%ld,\"mean_ns\":%.1f,\"p50_ns\":%lld,\"p90_ns\":%lld,\"p99_ns\":%lld}\n",
           calls, (double)sum / (double)calls, t[calls / 2], t[(calls * 9) / 10],
           t[(calls * 99) / 100]);
    free(t);
    free(msg);
    return 0;
}
