/*
 * edge_subscriber: a subscriber to the edge daemon in C (libzmq + msgpack-c), written from
 * docs/protocol.md alone. It prints one line per event and, for each defect of a result,
 * decodes mask_rle and prints the decoded pixel count and bounding box.
 *
 *   edge_subscriber [-n COUNT] [-r] [-s] ENDPOINT      e.g. edge_subscriber tcp://edge-host:5556
 *
 *   -n COUNT  exit after COUNT events (status messages are not counted)
 *   -r        also print each decoded mask as row-major runs "start:length,..." (0-based
 *             index y * w + x), for comparing masks pixel by pixel
 *   -s        also print status messages
 *
 * Output, one line each (key=value, space-separated; names and reasons are printed as-is):
 *   result camera=cam1 seq=8 defective=1 defects=2 latency_ms=3.1
 *   defect camera=cam1 seq=8 class_id=1 name=dark score=0.9512 area_px=6000 decoded_px=6000 bbox=300,40,120,50
 *   reject|drop camera=cam1 seq=9 reason=...
 *   gap camera=cam1 first_seq=11 last_seq=13 missing=3
 *   camera_restart camera=cam1 previous_seq=40 seq=0
 *   status daemon=line2 uptime_s=12.0
 */
#include <errno.h>
#include <inttypes.h>
#include <msgpack.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static volatile sig_atomic_t stop_requested = 0;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

/* The value under a string key of a msgpack map, or NULL. */
static const msgpack_object *get(const msgpack_object *map, const char *key) {
    if (map->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t len = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == len &&
            memcmp(k->via.str.ptr, key, len) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static bool get_int(const msgpack_object *map, const char *key, int64_t *out) {
    const msgpack_object *v = get(map, key);
    if (v == NULL) return false;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (v->via.u64 > INT64_MAX) return false;
        *out = (int64_t)v->via.u64;
        return true;
    }
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = v->via.i64;
        return true;
    }
    return false;
}

static double get_float(const msgpack_object *map, const char *key) {
    const msgpack_object *v = get(map, key);
    if (v == NULL) return 0.0;
    if (v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32) return v->via.f64;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) return (double)v->via.u64;
    return 0.0;
}

/* A str value as printf("%.*s") arguments; "" when absent or not a string. */
#define STR_ARGS(s) (int)(s).size, (s).ptr
static msgpack_object_str get_str(const msgpack_object *map, const char *key) {
    const msgpack_object *v = get(map, key);
    msgpack_object_str empty = {0, ""};
    return (v != NULL && v->type == MSGPACK_OBJECT_STR) ? v->via.str : empty;
}

/*
 * Decode a Kaggle/Severstal RLE string into mask (h * w bytes, row-major, 0/1). Pixels are
 * numbered from 1 down each column, then column by column: pixel n is row (n-1) % h, column
 * (n-1) / h. Returns false (with a message on stderr) on a malformed string.
 */
static bool rle_decode(const char *rle, size_t len, int64_t h, int64_t w, uint8_t *mask) {
    const int64_t total = h * w;
    memset(mask, 0, (size_t)total);
    char *text = malloc(len + 1);
    if (text == NULL) return false;
    memcpy(text, rle, len);
    text[len] = '\0';
    char *cursor = text;
    bool ok = true;
    for (;;) {
        char *end;
        errno = 0;
        long long start = strtoll(cursor, &end, 10);
        if (end == cursor) break; /* no more numbers */
        cursor = end;
        long long length = strtoll(cursor, &end, 10);
        if (end == cursor || errno != 0 || start < 1 || length < 1 || start - 1 >= total ||
            length > total - (start - 1)) {
            fprintf(stderr, "malformed mask_rle near offset %td\n", cursor - text);
            ok = false;
            break;
        }
        cursor = end;
        for (int64_t p = start - 1; p < start - 1 + length; p++) {
            int64_t y = p % h, x = p / h;
            mask[y * w + x] = 1;
        }
    }
    while (ok && *cursor == ' ') cursor++;
    if (ok && *cursor != '\0') {
        fprintf(stderr, "malformed mask_rle: unexpected '%c'\n", *cursor);
        ok = false;
    }
    free(text);
    return ok;
}

static void print_defect(const msgpack_object *ev, const msgpack_object *d, int64_t h, int64_t w,
                         bool runs) {
    msgpack_object_str camera = get_str(ev, "camera"), name = get_str(d, "name");
    msgpack_object_str rle = get_str(d, "mask_rle");
    int64_t seq = -1, class_id = 0, area = 0;
    get_int(ev, "seq", &seq);
    get_int(d, "class_id", &class_id);
    get_int(d, "area_px", &area);
    printf("defect camera=%.*s seq=%" PRId64 " class_id=%" PRId64 " name=%.*s score=%.4f area_px=%" PRId64,
           STR_ARGS(camera), seq, class_id, STR_ARGS(name), get_float(d, "score"), area);
    uint8_t *mask = malloc((size_t)(h * w));
    if (mask == NULL || !rle_decode(rle.ptr, rle.size, h, w, mask)) {
        printf(" decoded_px=-1\n");
        free(mask);
        return;
    }
    int64_t count = 0, x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (int64_t y = 0; y < h; y++) {
        for (int64_t x = 0; x < w; x++) {
            if (!mask[y * w + x]) continue;
            count++;
            if (x < x0) x0 = x;
            if (x > x1) x1 = x;
            if (y < y0) y0 = y;
            if (y > y1) y1 = y;
        }
    }
    if (count == 0) x0 = y0 = 0, x1 = y1 = -1;
    printf(" decoded_px=%" PRId64 " bbox=%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64, count, x0,
           y0, x1 - x0 + 1, y1 - y0 + 1);
    if (runs) {
        printf(" runs=");
        const char *sep = "";
        for (int64_t i = 0; i < h * w; i++) {
            if (!mask[i] || (i > 0 && mask[i - 1])) continue;
            int64_t j = i;
            while (j < h * w && mask[j]) j++;
            printf("%s%" PRId64 ":%" PRId64, sep, i, j - i);
            sep = ",";
        }
    }
    printf("\n");
    free(mask);
}

/* Print one event; returns true when it counts towards -n (every event but status). */
static bool handle(const msgpack_object *ev, bool show_status, bool runs) {
    int64_t v = 0;
    msgpack_object_str kind = get_str(ev, "kind");
    if (!get_int(ev, "v", &v) || v != 1 || kind.size == 0) {
        fprintf(stderr, "ignored a message that is not a v1 event\n");
        return false;
    }
    msgpack_object_str camera = get_str(ev, "camera");
    int64_t seq = -1;
    get_int(ev, "seq", &seq);
#define IS(k) (kind.size == strlen(k) && memcmp(kind.ptr, k, kind.size) == 0)
    if (IS("status")) {
        if (show_status)
            printf("status daemon=%.*s uptime_s=%.1f\n", STR_ARGS(get_str(ev, "daemon")),
                   get_float(ev, "uptime_s"));
        return false;
    }
    if (IS("result")) {
        const msgpack_object *defects = get(ev, "defects"), *shape = get(ev, "shape");
        uint32_t n = (defects && defects->type == MSGPACK_OBJECT_ARRAY) ? defects->via.array.size : 0;
        printf("result camera=%.*s seq=%" PRId64 " defective=%d defects=%u latency_ms=%.1f\n",
               STR_ARGS(camera), seq, n > 0, n, get_float(ev, "latency_ms"));
        if (shape == NULL || shape->type != MSGPACK_OBJECT_ARRAY || shape->via.array.size < 2 ||
            shape->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            shape->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            if (n > 0) fprintf(stderr, "result without a usable shape: masks not decoded\n");
            return true;
        }
        int64_t h = (int64_t)shape->via.array.ptr[0].via.u64;
        int64_t w = (int64_t)shape->via.array.ptr[1].via.u64;
        for (uint32_t i = 0; i < n; i++) print_defect(ev, &defects->via.array.ptr[i], h, w, runs);
    } else if (IS("reject") || IS("drop")) {
        printf("%.*s camera=%.*s seq=%" PRId64 " reason=%.*s\n", STR_ARGS(kind), STR_ARGS(camera),
               seq, STR_ARGS(get_str(ev, "reason")));
    } else if (IS("gap")) {
        int64_t first = 0, last = 0, missing = 0;
        get_int(ev, "first_seq", &first);
        get_int(ev, "last_seq", &last);
        get_int(ev, "missing", &missing);
        printf("gap camera=%.*s first_seq=%" PRId64 " last_seq=%" PRId64 " missing=%" PRId64 "\n",
               STR_ARGS(camera), first, last, missing);
    } else if (IS("camera_restart")) {
        int64_t previous = 0;
        get_int(ev, "previous_seq", &previous);
        printf("camera_restart camera=%.*s previous_seq=%" PRId64 " seq=%" PRId64 "\n",
               STR_ARGS(camera), previous, seq);
    } else {
        printf("%.*s camera=%.*s\n", STR_ARGS(kind), STR_ARGS(camera)); /* a kind added in v1 */
    }
#undef IS
    return true;
}

int main(int argc, char **argv) {
    long count = -1;
    bool runs = false, show_status = false;
    int opt;
    while ((opt = getopt(argc, argv, "n:rs")) != -1) {
        if (opt == 'n') count = strtol(optarg, NULL, 10);
        else if (opt == 'r') runs = true;
        else if (opt == 's') show_status = true;
        else {
            fprintf(stderr, "usage: %s [-n COUNT] [-r] [-s] ENDPOINT\n", argv[0]);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "usage: %s [-n COUNT] [-r] [-s] ENDPOINT\n", argv[0]);
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    setvbuf(stdout, NULL, _IOLBF, 0); /* one line per event, also into a pipe */

    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    int linger = 0;
    zmq_setsockopt(sub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "event/", 6);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "status/", 7);
    if (zmq_connect(sub, argv[optind]) != 0) {
        fprintf(stderr, "cannot connect to %s: %s\n", argv[optind], zmq_strerror(zmq_errno()));
        return 2;
    }
    fprintf(stderr, "subscribed to %s\n", argv[optind]);

    long seen = 0;
    while (!stop_requested && (count < 0 || seen < count)) {
        zmq_pollitem_t item = {sub, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 100) <= 0) continue;
        zmq_msg_t parts[3];
        int nparts = 0;
        int more = 1;
        while (more) { /* read every part of the message, keeping the first three */
            zmq_msg_t part;
            zmq_msg_init(&part);
            if (zmq_msg_recv(&part, sub, 0) < 0) {
                zmq_msg_close(&part);
                break;
            }
            more = zmq_msg_more(&part);
            if (nparts < 3) parts[nparts++] = part;
            else zmq_msg_close(&part);
        }
        if (nparts == 2) {
            msgpack_unpacked result;
            msgpack_unpacked_init(&result);
            size_t offset = 0;
            if (msgpack_unpack_next(&result, zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]),
                                    &offset) == MSGPACK_UNPACK_SUCCESS) {
                if (handle(&result.data, show_status, runs)) seen++;
            } else {
                fprintf(stderr, "ignored a body that is not msgpack\n");
            }
            msgpack_unpacked_destroy(&result);
        } else {
            fprintf(stderr, "ignored a message of %d parts (events have 2)\n", nparts);
        }
        for (int i = 0; i < nparts; i++) zmq_msg_close(&parts[i]);
    }
    zmq_close(sub);
    zmq_ctx_term(ctx);
    return 0;
}
