/* writelog: an LD_PRELOAD library that logs every write-type call a process makes on the
 * files of one directory, with offsets and data: dm-log-writes in user space, one level
 * up (file operations instead of block writes), so that powercut.py can rebuild what a
 * disk with a volatile write cache may hold after a power cut at any point.
 *
 * Environment:
 *   WRITELOG_DIR     the directory watched (absolute, no trailing slash; no subdirectories)
 *   WRITELOG_LOG     the log file (outside WRITELOG_DIR)
 *   WRITELOG_MARKS   a file whose writes are logged as marks: the process writes a line
 *                    there after each call whose result it acknowledges, so the marks sit
 *                    in the log exactly between the file operations
 *   WRITELOG_NOSYNC  if set, fsync/fdatasync of the watched files do nothing (and are not
 *                    logged; the directory's still work): the harness must then find losses
 *
 * Each record: op (u32), fd (i32), arg (i32: open flags), offset (i64: write offset,
 * truncate length), len (u64), then len bytes (data, a path, or "old\0new"). A record is
 * written after its call returned successfully, so an fsync in the log has completed.
 *
 * Build: gcc -shared -fPIC -O2 -o writelog.so writelog.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { OP_OPEN = 1, OP_CLOSE, OP_WRITE, OP_TRUNC, OP_SYNC, OP_RENAME, OP_UNLINK, OP_MARK };
enum { UNTRACKED = 0, WATCHED_FILE, WATCHED_DIR, MARKS };
#define MAX_FD 65536

struct __attribute__((packed)) header {
    uint32_t op;
    int32_t fd;
    int32_t arg;
    int64_t offset;
    uint64_t len;
};

static char dir[PATH_MAX];
static size_t dir_len;
static char marks[PATH_MAX];
static int log_fd = -1;
static int nosync;
static unsigned char tracked[MAX_FD];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);

static void die(const char *what) {
    char message[256];
    int n = snprintf(message, sizeof message, "writelog: %s\n", what);
    if (n > 0) (void)!real_write(2, message, (size_t)n);
    abort();
}

static void *resolve(const char *name) {
    void *fn = dlsym(RTLD_NEXT, name);
    if (fn == NULL) die(name);
    return fn;
}

__attribute__((constructor)) static void init(void) {
    real_write = resolve("write");
    real_open = resolve("open");
    real_open64 = resolve("open64");
    real_openat = resolve("openat");
    real_openat64 = resolve("openat64");
    real_close = resolve("close");
    real_pwrite = resolve("pwrite");
    real_pwrite64 = resolve("pwrite64");
    real_writev = resolve("writev");
    real_pwritev = resolve("pwritev");
    real_pwritev64 = resolve("pwritev64");
    real_ftruncate = resolve("ftruncate");
    real_ftruncate64 = resolve("ftruncate64");
    real_fsync = resolve("fsync");
    real_fdatasync = resolve("fdatasync");
    real_rename = resolve("rename");
    real_renameat = resolve("renameat");
    real_renameat2 = resolve("renameat2");
    real_unlink = resolve("unlink");
    real_unlinkat = resolve("unlinkat");
    const char *d = getenv("WRITELOG_DIR"), *l = getenv("WRITELOG_LOG"), *m = getenv("WRITELOG_MARKS");
    if (d == NULL || l == NULL) return; /* not asked to log: a plain pass-through */
    if (strlen(d) >= sizeof dir || (m != NULL && strlen(m) >= sizeof marks)) die("path too long");
    strcpy(dir, d);
    dir_len = strlen(dir);
    if (m != NULL) strcpy(marks, m);
    nosync = getenv("WRITELOG_NOSYNC") != NULL;
    log_fd = real_open(l, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0) die("cannot open WRITELOG_LOG");
}

/* One record: the header then `count` buffers of `total` bytes in all. */
static void emit(uint32_t op, int fd, int arg, int64_t offset, const struct iovec *data, int count,
                 size_t total) {
    struct header h = {op, fd, arg, offset, total};
    struct iovec parts[IOV_MAX];
    if (count >= IOV_MAX) die("too many buffers in one write");
    parts[0].iov_base = &h;
    parts[0].iov_len = sizeof h;
    memcpy(parts + 1, data, sizeof(struct iovec) * (size_t)count);
    size_t want = sizeof h + total;
    pthread_mutex_lock(&lock);
    ssize_t n = real_writev(log_fd, parts, count + 1);
    pthread_mutex_unlock(&lock);
    if (n < 0 || (size_t)n != want) die("short write to WRITELOG_LOG");
}

static void emit_bytes(uint32_t op, int fd, int arg, int64_t offset, const void *data, size_t len) {
    struct iovec one = {(void *)data, len};
    emit(op, fd, arg, offset, &one, 1, len);
}

/* The first `total` bytes of an iovec array, as the buffers they span. */
static int clip(const struct iovec *iov, int count, size_t total, struct iovec *out) {
    int n = 0;
    for (int i = 0; i < count && total > 0 && n < IOV_MAX - 1; i++) {
        size_t take = iov[i].iov_len < total ? iov[i].iov_len : total;
        out[n].iov_base = iov[i].iov_base;
        out[n++].iov_len = take;
        total -= take;
    }
    if (total > 0) die("too many buffers in one write");
    return n;
}

/* `path` (relative to `at`) as an absolute path; 0 if it cannot be made. */
static int absolute(int at, const char *path, char *out) {
    char base[PATH_MAX];
    if (path[0] == '/') {
        base[0] = '\0';
    } else if (at == AT_FDCWD) {
        if (getcwd(base, sizeof base) == NULL) return 0;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", at);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n < 0) return 0;
        base[n] = '\0';
    }
    int n = snprintf(out, PATH_MAX, "%s%s%s", base, base[0] ? "/" : "", path);
    return n > 0 && n < PATH_MAX;
}

static int watched(const char *abs) {
    return log_fd >= 0 && strncmp(abs, dir, dir_len) == 0 && abs[dir_len] == '/';
}

static int kind(int fd) { return fd >= 0 && fd < MAX_FD ? tracked[fd] : UNTRACKED; }

static void opened(int at, const char *path, int flags, int fd) {
    if (fd < 0 || log_fd < 0) return;
    if (fd >= MAX_FD) die("descriptor beyond the table");
    char abs[PATH_MAX];
    tracked[fd] = UNTRACKED;
    if (!absolute(at, path, abs)) return;
    if (strcmp(abs, dir) == 0 || watched(abs)) {
        tracked[fd] = watched(abs) ? WATCHED_FILE : WATCHED_DIR;
        emit_bytes(OP_OPEN, fd, flags, 0, abs, strlen(abs));
    } else if (marks[0] && strcmp(abs, marks) == 0) {
        tracked[fd] = MARKS;
    }
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_open(path, flags, mode);
    opened(AT_FDCWD, path, flags, fd);
    return fd;
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_open64(path, flags, mode);
    opened(AT_FDCWD, path, flags, fd);
    return fd;
}

int openat(int at, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_openat(at, path, flags, mode);
    opened(at, path, flags, fd);
    return fd;
}

int openat64(int at, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_openat64(at, path, flags, mode);
    opened(at, path, flags, fd);
    return fd;
}

int close(int fd) {
    int k = kind(fd);
    if (k == WATCHED_FILE || k == WATCHED_DIR) emit_bytes(OP_CLOSE, fd, 0, 0, NULL, 0);
    if (k != UNTRACKED) tracked[fd] = UNTRACKED;
    return real_close(fd);
}

/* A write of `n` bytes that went to `offset` (for write/writev: where the file offset
 * was; read back after the call, which is right for O_APPEND too). */
static void wrote(int fd, const struct iovec *iov, int count, ssize_t n, int64_t offset) {
    int k = kind(fd);
    if (n <= 0 || (k != WATCHED_FILE && k != MARKS)) return;
    if (offset < 0) offset = (int64_t)lseek(fd, 0, SEEK_CUR) - n;
    struct iovec parts[IOV_MAX];
    int used = clip(iov, count, (size_t)n, parts);
    emit(k == MARKS ? OP_MARK : OP_WRITE, fd, 0, offset, parts, used, (size_t)n);
}

ssize_t write(int fd, const void *buf, size_t len) {
    ssize_t n = real_write(fd, buf, len);
    struct iovec one = {(void *)buf, len};
    wrote(fd, &one, 1, n, -1);
    return n;
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t offset) {
    ssize_t n = real_pwrite(fd, buf, len, offset);
    struct iovec one = {(void *)buf, len};
    wrote(fd, &one, 1, n, offset);
    return n;
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t offset) {
    ssize_t n = real_pwrite64(fd, buf, len, offset);
    struct iovec one = {(void *)buf, len};
    wrote(fd, &one, 1, n, offset);
    return n;
}

ssize_t writev(int fd, const struct iovec *iov, int count) {
    ssize_t n = real_writev(fd, iov, count);
    wrote(fd, iov, count, n, -1);
    return n;
}

ssize_t pwritev(int fd, const struct iovec *iov, int count, off_t offset) {
    ssize_t n = real_pwritev(fd, iov, count, offset);
    wrote(fd, iov, count, n, offset);
    return n;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int count, off_t offset) {
    ssize_t n = real_pwritev64(fd, iov, count, offset);
    wrote(fd, iov, count, n, offset);
    return n;
}

static void truncated(int fd, int result, off_t length) {
    if (result == 0 && kind(fd) == WATCHED_FILE) emit_bytes(OP_TRUNC, fd, 0, length, NULL, 0);
}

int ftruncate(int fd, off_t length) {
    int result = real_ftruncate(fd, length);
    truncated(fd, result, length);
    return result;
}

int ftruncate64(int fd, off_t length) {
    int result = real_ftruncate64(fd, length);
    truncated(fd, result, length);
    return result;
}

static int synced(int fd, int (*real)(int)) {
    int k = kind(fd);
    int watched_fd = k == WATCHED_FILE || k == WATCHED_DIR;
    if (k == WATCHED_FILE && nosync) return 0;
    int result = real(fd);
    if (result == 0 && watched_fd) emit_bytes(OP_SYNC, fd, 0, 0, NULL, 0);
    return result;
}

int fsync(int fd) { return synced(fd, real_fsync); }

int fdatasync(int fd) { return synced(fd, real_fdatasync); }

static void renamed(int result, int old_at, const char *old, int new_at, const char *new) {
    char from[PATH_MAX], to[PATH_MAX];
    if (result != 0 || log_fd < 0) return;
    if (!absolute(old_at, old, from) || !absolute(new_at, new, to)) return;
    if (!watched(from) && !watched(to)) return;
    size_t a = strlen(from) + 1, b = strlen(to);
    struct iovec both[2] = {{from, a}, {to, b}};
    emit(OP_RENAME, -1, 0, 0, both, 2, a + b);
}

int rename(const char *old, const char *new) {
    int result = real_rename(old, new);
    renamed(result, AT_FDCWD, old, AT_FDCWD, new);
    return result;
}

int renameat(int old_at, const char *old, int new_at, const char *new) {
    int result = real_renameat(old_at, old, new_at, new);
    renamed(result, old_at, old, new_at, new);
    return result;
}

int renameat2(int old_at, const char *old, int new_at, const char *new, unsigned int flags) {
    int result = real_renameat2(old_at, old, new_at, new, flags);
    renamed(result, old_at, old, new_at, new);
    return result;
}

static void unlinked(int result, int at, const char *path) {
    char abs[PATH_MAX];
    if (result == 0 && log_fd >= 0 && absolute(at, path, abs) && watched(abs))
        emit_bytes(OP_UNLINK, -1, 0, 0, abs, strlen(abs));
}

int unlink(const char *path) {
    int result = real_unlink(path);
    unlinked(result, AT_FDCWD, path);
    return result;
}

int unlinkat(int at, const char *path, int flags) {
    int result = real_unlinkat(at, path, flags);
    if (!(flags & AT_REMOVEDIR)) unlinked(result, at, path);
    return result;
}
