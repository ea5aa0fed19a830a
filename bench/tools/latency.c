/* A latency instrument precise to microseconds, for what a Python harness cannot resolve.
 *
 *   latency sse-backend PORT
 *   latency sse-client PORT STREAMS SECONDS WARMUP
 *   latency openloop PORT PATH RATE SECONDS CONNECTIONS
 *
 * sse-backend: prints `listening PORT` (PORT 0: any free port), then answers `GET /sse?phase_us=P` with a chunked text/event-stream that sends one
 *   event every 100 ms at `start + P + k * 100 ms` (start: the backend's own start, so every
 *   stream shares one grid); each event carries CLOCK_MONOTONIC taken just before its write().
 *   Any other request gets `200 ok` (keep-alive): health checks and readiness probes.
 * sse-client: opens STREAMS streams with their phases spread evenly over the 100 ms period,
 *   reads them on one epoll, and takes the clock right after each read() returns: the lag of
 *   an event is that time minus its send time (CLOCK_MONOTONIC is one clock for every process
 *   on the machine). Events read in the first WARMUP seconds are not counted.
 *   Why spread: 100 streams firing at the same instant measure a burst (the 100th event waits
 *   for the 99 relayed before it), not a relay; independent streams are not in step.
 * openloop: an open-loop HTTP/1.1 client. Request i is due at `start + i / RATE`; it goes out
 *   on an idle keep-alive connection of a pool of CONNECTIONS (the most recently freed one
 *   first), or waits in a FIFO backlog for the next one freed; its latency counts from when it
 *   was due, so a stall costs every request it delays. A periodic timerfd wakes at each due
 *   time. Answers must be framed by Content-Length. Requests unanswered 5 s after the last
 *   was due count with the time they waited.
 *
 * Each mode but the backend prints one JSON object; times are in microseconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define GAP_NS 100000000LL /* one event per stream every 100 ms */
#define BUF 65536
#define MAX_EVENTS 256

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* `array` with room for `needed` items of `size`; what it gains is zeroed. */
static void *grow(void *array, size_t *capacity, size_t size, size_t needed) {
    if (needed <= *capacity)
        return array;
    size_t before = *capacity;
    while (*capacity < needed)
        *capacity = *capacity ? *capacity * 2 : 1024;
    array = realloc(array, *capacity * size);
    if (!array)
        die("realloc");
    memset((char *)array + before * size, 0, (*capacity - before) * size);
    return array;
}

/* -- samples ---------------------------------------------------------------------------- */
typedef struct {
    int64_t *values;
    size_t count, capacity;
} Samples;

static void add(Samples *s, int64_t value) {
    s->values = grow(s->values, &s->capacity, sizeof(int64_t), s->count + 1);
    s->values[s->count++] = value;
}

static int by_value(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double rank(const Samples *s, double q) { /* nearest rank, as bench/stats.py */
    size_t r = (size_t)((q / 100.0) * (double)s->count + 0.999999999);
    if (r < 1)
        r = 1;
    return (double)s->values[r - 1] / 1000.0;
}

static void print_summary(const char *name, Samples *s) {
    if (!s->count) {
        printf("\"%s\": {}", name);
        return;
    }
    qsort(s->values, s->count, sizeof(int64_t), by_value);
    double sum = 0;
    for (size_t i = 0; i < s->count; i++)
        sum += (double)s->values[i];
    printf("\"%s\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p99.9\": %.1f, "
           "\"max\": %.1f, \"mean\": %.1f}",
           name, rank(s, 50), rank(s, 90), rank(s, 99), rank(s, 99.9),
           (double)s->values[s->count - 1] / 1000.0, sum / (double)s->count / 1000.0);
}

/* -- sockets ---------------------------------------------------------------------------- */
static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = loopback(port);
    int one = 1;
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void watch(int epoll, int fd, uint32_t events) {
    struct epoll_event e = {.events = events, .data.fd = fd};
    if (epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &e) < 0)
        die("epoll_ctl");
}

static int write_all(int fd, const char *data, size_t size) {
    while (size) {
        ssize_t n = write(fd, data, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        size -= (size_t)n;
    }
    return 0;
}

/* -- sse-backend ------------------------------------------------------------------------ */
typedef struct {
    int open, streaming;
    int64_t next;
    size_t len;
    char head[4096];
} Peer;

static Peer *peers;
static size_t peers_capacity;

static int64_t first_due(int64_t start, int64_t phase, int64_t now) {
    int64_t due = start + phase;
    if (due <= now)
        due += ((now - due) / GAP_NS + 1) * GAP_NS;
    return due;
}

static void serve_head(int fd, Peer *p, int64_t start) {
    char *end;
    while ((end = memmem(p->head, p->len, "\r\n\r\n", 4))) {
        size_t used = (size_t)(end - p->head) + 4;
        if (!strncmp(p->head, "GET /sse", 8)) {
            const char *ok = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             "cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
            char *phase = memmem(p->head, used, "phase_us=", 9);
            int64_t phase_ns = phase ? atoll(phase + 9) * 1000LL % GAP_NS : 0;
            p->streaming = 1;
            p->next = first_due(start, phase_ns, now_ns());
            write_all(fd, ok, strlen(ok));
            return; /* a stream never ends: nothing after its head is read */
        }
        const char *ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        write_all(fd, ok, strlen(ok));
        memmove(p->head, p->head + used, p->len - used);
        p->len -= used;
    }
}

static void backend_read(int epoll, int fd, int64_t start) {
    Peer *p = &peers[fd];
    char scratch[4096];
    char *into = p->streaming ? scratch : p->head + p->len;
    size_t room = p->streaming ? sizeof scratch : sizeof p->head - p->len;
    ssize_t n = read(fd, into, room);
    if (n <= 0 || (!p->streaming && room == 0)) {
        epoll_ctl(epoll, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        p->open = p->streaming = 0;
        return;
    }
    if (!p->streaming) {
        p->len += (size_t)n;
        serve_head(fd, p, start);
    }
}

static int64_t send_due_events(size_t highest) {
    int64_t earliest = INT64_MAX;
    for (size_t fd = 0; peers && fd <= highest; fd++) {
        Peer *p = &peers[fd];
        if (!p->open || !p->streaming)
            continue;
        if (p->next <= now_ns()) {
            char event[64], chunk[96];
            int64_t sent = now_ns(); /* just before write(): what the client subtracts */
            int size = snprintf(event, sizeof event, "data: %lld\n\n", (long long)sent);
            int whole = snprintf(chunk, sizeof chunk, "%x\r\n%s\r\n", size, event);
            if (write(fd, chunk, (size_t)whole) != whole)
                p->streaming = 0; /* a stalled or gone reader: no more events for it */
            p->next += GAP_NS;
        }
        if (p->next < earliest)
            earliest = p->next;
    }
    return earliest;
}

static void arm(int timer, int64_t when) {
    struct itimerspec t = {0};
    if (when == INT64_MAX)
        when = now_ns() + GAP_NS;
    t.it_value.tv_sec = when / 1000000000LL;
    t.it_value.tv_nsec = when % 1000000000LL;
    timerfd_settime(timer, TFD_TIMER_ABSTIME, &t, NULL);
}

static _Noreturn void sse_backend(int port) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = loopback(port);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&a, sizeof a) < 0 || listen(listener, 4096) < 0)
        die("listen");
    socklen_t size = sizeof a;
    getsockname(listener, (struct sockaddr *)&a, &size);
    printf("listening %d\n", ntohs(a.sin_port)); /* PORT 0: the kernel's choice */
    fflush(stdout);
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    watch(epoll, listener, EPOLLIN);
    watch(epoll, timer, EPOLLIN);
    int64_t start = now_ns();
    size_t highest = 0;
    arm(timer, start + GAP_NS);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int ready = epoll_wait(epoll, events, MAX_EVENTS, -1);
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (fd == timer) {
                uint64_t ticks;
                if (read(timer, &ticks, sizeof ticks) < 0 && errno != EAGAIN)
                    die("timerfd");
                arm(timer, send_due_events(highest));
            } else if (fd == listener) {
                int peer;
                while ((peer = accept4(listener, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                    setsockopt(peer, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    peers = grow(peers, &peers_capacity, sizeof(Peer), (size_t)peer + 1);
                    memset(&peers[peer], 0, sizeof(Peer));
                    peers[peer].open = 1;
                    if ((size_t)peer > highest)
                        highest = (size_t)peer;
                    watch(epoll, peer, EPOLLIN);
                }
            } else {
                backend_read(epoll, fd, start);
                arm(timer, send_due_events(highest));
            }
        }
    }
}

/* -- sse-client ------------------------------------------------------------------------- */
typedef struct {
    int head_done, closed;
    size_t len;
    char line[256];
} Stream;

/* One read's bytes: complete lines `data: <ns>` are events; anything else is framing. */
static int take_events(Stream *s, const char *data, size_t size, int64_t read_at, int counted,
                       Samples *lags) {
    int events = 0;
    for (size_t i = 0; i < size; i++) {
        char c = data[i];
        if (c != '\n') {
            if (s->len < sizeof s->line - 1)
                s->line[s->len++] = c;
            continue;
        }
        s->line[s->len] = 0;
        if (!s->head_done && !strncmp(s->line, "HTTP/1.", 7) && strncmp(s->line + 9, "200", 3))
            s->closed = 2; /* not a stream: counted as a bad head */
        if (s->len <= 1)
            s->head_done = 1;
        if (!strncmp(s->line, "data: ", 6)) {
            events++;
            if (counted)
                add(lags, read_at - atoll(s->line + 6));
        }
        s->len = 0;
    }
    return events;
}

static int sse_client(int port, int streams, double seconds, double warmup) {
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    Stream *state = calloc((size_t)streams, sizeof(Stream));
    int *fds = calloc((size_t)streams, sizeof(int));
    for (int i = 0; i < streams; i++) {
        char request[128];
        long long phase_us = (GAP_NS / 1000) * i / streams;
        int size = snprintf(request, sizeof request,
                            "GET /sse?phase_us=%lld HTTP/1.1\r\nHost: bench\r\n\r\n", phase_us);
        fds[i] = connect_to(port);
        if (write_all(fds[i], request, (size_t)size) < 0)
            die("write");
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(epoll, EPOLL_CTL_ADD, fds[i], &e);
    }
    Samples lags = {0};
    long coalesced = 0, reads = 0;
    int64_t start = now_ns(), count_from = start + (int64_t)(warmup * 1e9);
    int64_t end = count_from + (int64_t)(seconds * 1e9);
    struct epoll_event events[MAX_EVENTS];
    char buffer[BUF];
    for (int64_t now = start; now < end; now = now_ns()) {
        int ready = epoll_wait(epoll, events, MAX_EVENTS, (int)((end - now) / 1000000) + 1);
        for (int i = 0; i < ready; i++) {
            int k = (int)events[i].data.u32;
            ssize_t n = read(fds[k], buffer, sizeof buffer);
            int64_t read_at = now_ns();
            if (n <= 0) {
                state[k].closed = state[k].closed ? state[k].closed : 1;
                epoll_ctl(epoll, EPOLL_CTL_DEL, fds[k], NULL);
                continue;
            }
            int counted = read_at >= count_from && read_at < end;
            int got = take_events(&state[k], buffer, (size_t)n, read_at, counted, &lags);
            reads += counted;
            coalesced += counted && got > 1;
        }
    }
    int closed = 0, bad = 0;
    for (int i = 0; i < streams; i++) {
        closed += state[i].closed == 1;
        bad += state[i].closed == 2;
        close(fds[i]);
    }
    double expected = seconds * (1e9 / (double)GAP_NS) * streams;
    printf("{\"streams\": %d, \"seconds\": %.1f, \"events\": %zu, \"expected\": %.0f, "
           "\"reads\": %ld, \"reads_with_more_than_one_event\": %ld, \"streams_closed\": %d, "
           "\"bad_heads\": %d, ",
           streams, seconds, lags.count, expected, reads, coalesced, closed, bad);
    print_summary("lag_us", &lags);
    printf("}\n");
    return 0;
}

/* -- openloop --------------------------------------------------------------------------- */
typedef struct {
    int fd;
    long request; /* the request it carries, or -1 */
    size_t len;
    char in[BUF];
} Conn;

typedef struct {
    Conn *conns;
    int count, *idle, idle_count;
    long *backlog; /* a FIFO of due requests, indices into the schedule */
    long backlog_head, backlog_tail;
    int64_t start, step;
    int port;
    const char *request;
    size_t request_len;
    Samples latency, send_lag;
    long ok, other, broken, answered;
} Load;

static int64_t due(const Load *l, long request) { return l->start + request * l->step; }

static void send_on(Load *l, int k, long request) {
    Conn *c = &l->conns[k];
    c->request = request;
    c->len = 0;
    int64_t at = now_ns();
    add(&l->send_lag, at - due(l, request));
    if (write_all(c->fd, l->request, l->request_len) < 0)
        c->len = (size_t)-1; /* noticed as broken when it reads */
}

static void free_conn(Load *l, int k) {
    if (l->backlog_head < l->backlog_tail)
        send_on(l, k, l->backlog[l->backlog_head++]);
    else
        l->idle[l->idle_count++] = k;
}

static void reconnect(Load *l, int epoll, int k) {
    Conn *c = &l->conns[k];
    epoll_ctl(epoll, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->request >= 0)
        l->broken++;
    c->fd = connect_to(l->port);
    c->request = -1;
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)k};
    epoll_ctl(epoll, EPOLL_CTL_ADD, c->fd, &e);
    free_conn(l, k);
}

/* An answer is whole when its head and Content-Length bytes of body are in: returns the
 * status, 0 while incomplete, -1 for a framing this tool does not read. */
static int whole_answer(Conn *c) {
    char *end = memmem(c->in, c->len, "\r\n\r\n", 4);
    if (!end)
        return c->len >= sizeof c->in ? -1 : 0;
    size_t head = (size_t)(end - c->in) + 4;
    long length = -1;
    for (char *line = memmem(c->in, head, "\r\n", 2); line && line < end;
         line = memmem(line + 2, (size_t)(end - line), "\r\n", 2)) {
        if (!strncasecmp(line + 2, "content-length:", 15))
            length = atol(line + 17);
    }
    if (length < 0)
        return -1;
    if (c->len < head + (size_t)length)
        return 0;
    if (c->len > head + (size_t)length)
        return -1; /* pipelining is never asked for */
    return atoi(c->in + 9);
}

static void load_read(Load *l, int epoll, int k) {
    Conn *c = &l->conns[k];
    ssize_t n = c->len == (size_t)-1 ? -1 : read(c->fd, c->in + c->len, sizeof c->in - c->len);
    int64_t at = now_ns();
    if (n <= 0 || c->request < 0) {
        reconnect(l, epoll, k);
        return;
    }
    c->len += (size_t)n;
    int status = whole_answer(c);
    if (status == 0)
        return;
    if (status < 0) {
        reconnect(l, epoll, k);
        return;
    }
    l->answered++;
    if (status >= 200 && status < 300) {
        l->ok++;
        add(&l->latency, at - due(l, c->request));
    } else {
        l->other++;
    }
    c->request = -1;
    free_conn(l, k);
}

static void release_due(Load *l, long *next, long total) {
    int64_t now = now_ns();
    while (*next < total && due(l, *next) <= now) {
        long request = (*next)++;
        if (l->idle_count)
            send_on(l, l->idle[--l->idle_count], request);
        else
            l->backlog[l->backlog_tail++] = request;
    }
}

static int openloop(int port, const char *path, double rate, double seconds, int connections) {
    Load l = {.count = connections, .port = port, .step = (int64_t)(1e9 / rate + 0.5)};
    long total = (long)(rate * seconds);
    char request[512];
    l.request_len = (size_t)snprintf(request, sizeof request,
                                     "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n", path);
    l.request = request;
    l.conns = calloc((size_t)connections, sizeof(Conn));
    l.idle = calloc((size_t)connections, sizeof(int));
    l.backlog = calloc((size_t)total + 1, sizeof(long));
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    for (int k = connections - 1; k >= 0; k--) {
        l.conns[k].fd = connect_to(port);
        l.conns[k].request = -1;
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)k};
        epoll_ctl(epoll, EPOLL_CTL_ADD, l.conns[k].fd, &e);
        l.idle[l.idle_count++] = k;
    }
    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(epoll, EPOLL_CTL_ADD, timer, &e);
    l.start = now_ns() + 10000000LL; /* 10 ms from now: the first request is not late */
    struct itimerspec every = {.it_interval = {l.step / 1000000000LL, l.step % 1000000000LL},
                               .it_value = {l.start / 1000000000LL, l.start % 1000000000LL}};
    timerfd_settime(timer, TFD_TIMER_ABSTIME, &every, NULL);
    long next = 0;
    int64_t give_up = due(&l, total) + 5000000000LL;
    struct epoll_event events[MAX_EVENTS];
    while (l.answered + l.broken < total && now_ns() < give_up) {
        int ready = epoll_wait(epoll, events, MAX_EVENTS, 100);
        for (int i = 0; i < ready; i++) {
            uint32_t k = events[i].data.u32;
            if (k == UINT32_MAX) {
                uint64_t ticks;
                if (read(timer, &ticks, sizeof ticks) < 0)
                    die("timerfd");
                release_due(&l, &next, total);
                if (next >= total) { /* the schedule is out: stop the ticks */
                    struct itimerspec off = {0};
                    timerfd_settime(timer, 0, &off, NULL);
                }
            } else {
                load_read(&l, epoll, (int)k);
            }
        }
    }
    int64_t end = now_ns();
    long unanswered = 0;
    for (int k = 0; k < connections; k++)
        if (l.conns[k].request >= 0) {
            unanswered++;
            add(&l.latency, end - due(&l, l.conns[k].request));
        }
    for (long b = l.backlog_head; b < l.backlog_tail; b++, unanswered++)
        add(&l.latency, end - due(&l, l.backlog[b]));
    printf("{\"offered_rate\": %.1f, \"duration_s\": %.1f, \"scheduled\": %ld, \"sent\": %zu, "
           "\"ok\": %ld, \"other_status\": %ld, \"broken\": %ld, \"unanswered\": %ld, ",
           rate, seconds, total, l.send_lag.count, l.ok, l.other, l.broken, unanswered);
    print_summary("latency_us", &l.latency);
    printf(", ");
    print_summary("send_lag_us", &l.send_lag);
    printf("}\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "sse-backend"))
        sse_backend(atoi(argv[2]));
    if (argc == 6 && !strcmp(argv[1], "sse-client"))
        return sse_client(atoi(argv[2]), atoi(argv[3]), atof(argv[4]), atof(argv[5]));
    if (argc == 7 && !strcmp(argv[1], "openloop"))
        return openloop(atoi(argv[2]), argv[3], atof(argv[4]), atof(argv[5]), atoi(argv[6]));
    fprintf(stderr, "usage: latency sse-backend PORT\n"
                    "       latency sse-client PORT STREAMS SECONDS WARMUP\n"
                    "       latency openloop PORT PATH RATE SECONDS CONNECTIONS\n");
    return 2;
}
