/*
 * Pure pipe floor: copies stdin to stdout byte for byte.
 *
 * It does not parse JSON or even look for newlines. A newline-framed request
 * comes back as the identical line, so a line-oriented parent sees "an echo
 * of each line", and what is measured is only the kernel pipe plus two
 * context switches, i.e. the cost no plugin implementation can get under.
 */
#include <errno.h>
#include <unistd.h>

int main(void) {
    static char buf[65536];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0) return 0;
        if (n < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        char *p = buf;
        while (n > 0) {
            ssize_t w = write(1, p, (size_t)n);
            if (w < 0) {
                if (errno == EINTR) continue;
                return 1; /* EPIPE: parent is gone, nothing left to serve */
            }
            p += w;
            n -= w;
        }
    }
}
