/*
 * loadgen: the benchmark's traffic generator, compiled at run time by bench/relaybench/loadgen.py.
 *
 * It is a separate C program so that the relay under test, not the generator, is the bottleneck: the
 * Python orchestrator opens the paired connections (protocol handshakes differ per relay) and passes the
 * connected sockets to this program by file descriptor number.
 *
 *   loadgen bulk BYTES CHUNK SECONDS MODE W:R [W:R ...]
 *       A writer process sends BYTES on every W descriptor in CHUNK-sized writes and then half-closes it;
 *       this process reads every R descriptor until BYTES arrived or EOF. MODE "copy" uses write/read,
 *       "splice" uses sendfile from a memfd and splice into /dev/null (no user-space copies), to show
 *       that copying in the generator is not what limits the figures.
 *   loadgen pingpong SIZE COUNT SECONDS A:B [block|poll]
 *       SIZE bytes A->B, echoed B->A, COUNT times after a short warm-up; prints round-trip percentiles.
 *       "block" (the default) reads with blocking reads, so the generator sleeps until the data is there
 *       and pays a scheduler wake-up for every read that had to wait. "poll" reads with non-blocking
 *       reads in a spin loop (recv MSG_DONTWAIT, retry on EAGAIN; busy-poll, like sockperf's or
 *       netperf's), so a round trip through a relay no longer includes the generator's own wake-ups,
 *       which direct TCP (the data is already in the socket when it reads) never pays. Writes block in
 *       both modes. A read that waits gives up one second after the time limit in both modes.
 *
 * Output: one JSON object on stdout. Everything stops at SECONDS (wall clock) whatever happens.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SESSIONS 256
#define READ_BUF (1 << 20)
#define WARMUP 200

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void set_nonblocking(int fd, int on) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) die("fcntl");
    fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    if (fcntl(fd, F_SETFL, fl) < 0) die("fcntl");
}

static double cpu_of(int who) {
    struct rusage ru;
    getrusage(who, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static int parse_pair(const char *s, int *a, int *b) {
    char *end;
    long x = strtol(s, &end, 10);
    if (*end != ':') return -1;
    long y = strtol(end + 1, &end, 10);
    if (*end != '\0' || x < 0 || y < 0) return -1;
    *a = (int)x;
    *b = (int)y;
    return 0;
}

/* The writer side of a bulk transfer; runs in its own process and exits when done or at the deadline. */
static void bulk_writer(int n, const int *wfd, long long bytes, long chunk, double deadline, int splice_mode) {
    char *buf = NULL;
    int memfd = -1;
    if (splice_mode) {
        memfd = memfd_create("loadgen", 0);
        if (memfd < 0) die("memfd_create");
        if (ftruncate(memfd, chunk) < 0) die("ftruncate");
    } else {
        buf = malloc((size_t)chunk);
        if (!buf) die("malloc");
        memset(buf, 0x5a, (size_t)chunk);
    }
    long long left[MAX_SESSIONS];
    struct pollfd pfd[MAX_SESSIONS];
    int active = n;
    for (int i = 0; i < n; i++) {
        left[i] = bytes;
        set_nonblocking(wfd[i], 1);
    }
    while (active > 0 && now_s() < deadline) {
        int m = 0;
        int idx[MAX_SESSIONS];
        for (int i = 0; i < n; i++) {
            if (left[i] > 0) {
                pfd[m].fd = wfd[i];
                pfd[m].events = POLLOUT;
                idx[m++] = i;
            }
        }
        int r = poll(pfd, (nfds_t)m, 200);
        if (r < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (int k = 0; k < m; k++) {
            if (!(pfd[k].revents & (POLLOUT | POLLERR | POLLHUP))) continue;
            int i = idx[k];
            for (;;) {
                size_t want = (size_t)(left[i] < chunk ? left[i] : chunk);
                ssize_t w;
                if (splice_mode) {
                    off_t off = 0;
                    w = sendfile(wfd[i], memfd, &off, want);
                } else {
                    w = write(wfd[i], buf, want);
                }
                if (w < 0) {
                    if (errno == EAGAIN || errno == EINTR) break;
                    left[i] = 0; /* peer gone: the reader will report the shortfall */
                    active--;
                    break;
                }
                left[i] -= w;
                if (left[i] == 0) {
                    shutdown(wfd[i], SHUT_WR);
                    active--;
                    break;
                }
            }
        }
    }
    _exit(0);
}

static int cmd_bulk(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: loadgen bulk BYTES CHUNK SECONDS copy|splice W:R...\n");
        return 2;
    }
    long long bytes = atoll(argv[1]);
    long chunk = atol(argv[2]);
    double seconds = atof(argv[3]);
    int splice_mode = strcmp(argv[4], "splice") == 0;
    int n = argc - 5;
    if (n > MAX_SESSIONS || bytes <= 0 || chunk <= 0 || seconds <= 0) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }
    int wfd[MAX_SESSIONS], rfd[MAX_SESSIONS];
    for (int i = 0; i < n; i++) {
        if (parse_pair(argv[5 + i], &wfd[i], &rfd[i]) < 0) {
            fprintf(stderr, "loadgen: bad pair %s\n", argv[5 + i]);
            return 2;
        }
    }
    double t0 = now_s();
    double deadline = t0 + seconds;
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) bulk_writer(n, wfd, bytes, chunk, deadline, splice_mode);

    char *buf = NULL;
    int pipefd[2] = {-1, -1};
    int devnull = -1;
    if (splice_mode) {
        if (pipe2(pipefd, O_NONBLOCK) < 0) die("pipe2");
        fcntl(pipefd[1], F_SETPIPE_SZ, READ_BUF);
        devnull = open("/dev/null", O_WRONLY);
        if (devnull < 0) die("open /dev/null");
    } else {
        buf = malloc(READ_BUF);
        if (!buf) die("malloc");
    }
    long long got[MAX_SESSIONS];
    int done[MAX_SESSIONS];
    int active = n, eof_early = 0;
    for (int i = 0; i < n; i++) {
        got[i] = 0;
        done[i] = 0;
        set_nonblocking(rfd[i], 1);
    }
    struct pollfd pfd[MAX_SESSIONS];
    while (active > 0 && now_s() < deadline) {
        int m = 0;
        int idx[MAX_SESSIONS];
        for (int i = 0; i < n; i++) {
            if (!done[i]) {
                pfd[m].fd = rfd[i];
                pfd[m].events = POLLIN;
                idx[m++] = i;
            }
        }
        int r = poll(pfd, (nfds_t)m, 200);
        if (r < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (int k = 0; k < m; k++) {
            if (!(pfd[k].revents & (POLLIN | POLLERR | POLLHUP))) continue;
            int i = idx[k];
            for (;;) {
                ssize_t rd;
                if (splice_mode) {
                    rd = splice(rfd[i], NULL, pipefd[1], NULL, READ_BUF, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                    if (rd > 0) {
                        ssize_t left = rd;
                        while (left > 0) {
                            ssize_t d = splice(pipefd[0], NULL, devnull, NULL, (size_t)left, SPLICE_F_MOVE);
                            if (d <= 0) die("splice to /dev/null");
                            left -= d;
                        }
                    }
                } else {
                    rd = read(rfd[i], buf, READ_BUF);
                }
                if (rd < 0) {
                    if (errno == EAGAIN || errno == EINTR) break;
                    rd = 0; /* reset: same as EOF for accounting */
                }
                if (rd == 0) {
                    done[i] = 1;
                    active--;
                    if (got[i] < bytes) eof_early++;
                    break;
                }
                got[i] += rd;
                if (got[i] >= bytes) {
                    done[i] = 1;
                    active--;
                    break;
                }
            }
        }
    }
    double elapsed = now_s() - t0;
    int timed_out = active > 0;
    if (timed_out) kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    long long total = 0, slowest = -1;
    for (int i = 0; i < n; i++) {
        total += got[i];
        if (slowest < 0 || got[i] < slowest) slowest = got[i];
    }
    printf("{\"mode\": \"%s\", \"sessions\": %d, \"bytes\": %lld, \"min_session_bytes\": %lld, "
           "\"seconds\": %.6f, \"complete\": %s, \"timed_out\": %s, \"eof_early\": %d, \"cpu_s\": %.4f}\n",
           splice_mode ? "splice" : "copy", n, total, slowest, elapsed,
           (!timed_out && !eof_early) ? "true" : "false", timed_out ? "true" : "false", eof_early,
           cpu_of(RUSAGE_SELF) + cpu_of(RUSAGE_CHILDREN));
    return 0;
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

static int read_exact(int fd, char *p, size_t n) {
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Like read_exact, but never sleeps: spins on non-blocking reads until the bytes are there, the peer is
 * gone, or the clock passes give_up (a stuck relay cannot hang the run). */
static int read_exact_poll(int fd, char *p, size_t n, double give_up) {
    while (n > 0) {
        ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                if (now_s() >= give_up) return -1;
                continue;
            }
            return -1;
        }
        if (r == 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *sorted, long n, double p) {
    long i = (long)(p * (double)(n - 1) + 0.5);
    return sorted[i];
}

static int cmd_pingpong(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: loadgen pingpong SIZE COUNT SECONDS A:B [block|poll]\n");
        return 2;
    }
    long size = atol(argv[1]);
    long count = atol(argv[2]);
    double seconds = atof(argv[3]);
    const char *mode = argc == 6 ? argv[5] : "block";
    int poll_mode = strcmp(mode, "poll") == 0;
    int a, b;
    if (size <= 0 || size > 65536 || count <= 0 || seconds <= 0 || parse_pair(argv[4], &a, &b) < 0 ||
        (!poll_mode && strcmp(mode, "block") != 0)) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }
    set_nonblocking(a, 0);
    set_nonblocking(b, 0);
    /* A stuck relay must not hang the run: blocking reads give up after the overall time budget. */
    struct timeval tv = {(time_t)seconds + 1, 0};
    setsockopt(a, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(b, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char *msg = malloc((size_t)size), *in = malloc((size_t)size);
    double *lat = malloc(sizeof(double) * (size_t)count);
    if (!msg || !in || !lat) die("malloc");
    memset(msg, 0x42, (size_t)size);
    double t0 = now_s(), deadline = t0 + seconds;
    double give_up = deadline + 1.0; /* the same grace as the blocking reads' SO_RCVTIMEO */
    long done = 0;
    int failed = 0;
    for (long i = 0; i < WARMUP + count; i++) {
        double t = now_s();
        if (t >= deadline) break;
        int bad;
        if (poll_mode) {
            bad = write_all(a, msg, (size_t)size) || read_exact_poll(b, in, (size_t)size, give_up) ||
                  write_all(b, in, (size_t)size) || read_exact_poll(a, in, (size_t)size, give_up);
        } else {
            bad = write_all(a, msg, (size_t)size) || read_exact(b, in, (size_t)size) ||
                  write_all(b, in, (size_t)size) || read_exact(a, in, (size_t)size);
        }
        if (bad) {
            failed = 1;
            break;
        }
        if (i >= WARMUP) lat[done++] = now_s() - t;
    }
    double elapsed = now_s() - t0;
    if (done == 0) {
        printf("{\"mode\": \"%s\", \"count\": 0, \"failed\": %s, \"seconds\": %.6f, \"cpu_s\": %.4f}\n",
               mode, failed ? "true" : "false", elapsed, cpu_of(RUSAGE_SELF));
        return 0;
    }
    double sum = 0;
    for (long i = 0; i < done; i++) sum += lat[i];
    qsort(lat, (size_t)done, sizeof(double), cmp_double);
    printf("{\"mode\": \"%s\", \"count\": %ld, \"failed\": %s, \"seconds\": %.6f, \"mean_us\": %.3f, "
           "\"p50_us\": %.3f, \"p90_us\": %.3f, \"p99_us\": %.3f, \"max_us\": %.3f, \"cpu_s\": %.4f}\n",
           mode, done, failed ? "true" : "false", elapsed, sum / (double)done * 1e6, pct(lat, done, 0.50) * 1e6,
           pct(lat, done, 0.90) * 1e6, pct(lat, done, 0.99) * 1e6, lat[done - 1] * 1e6, cpu_of(RUSAGE_SELF));
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && strcmp(argv[1], "bulk") == 0) return cmd_bulk(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "pingpong") == 0) return cmd_pingpong(argc - 1, argv + 1);
    fprintf(stderr, "usage: loadgen bulk|pingpong ...\n");
    return 2;
}
