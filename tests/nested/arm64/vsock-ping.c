// Both ends of the arm64 nested check's vsock round trip, static, with no library but libc
// (busybox has no vsock client).
//   vsock-ping guest PORT   (L2) connects to the host (CID 2) on PORT, sends one line, and
//                           prints "vsock-reply <the host's line>".
//   vsock-ping host PATH    (L1) listens on the Unix socket PATH (hull-vmm's --vsock-uds
//                           plus "_PORT"), accepts one connection, prints "vsock-got <line>"
//                           and answers "pong-from-l1".
// Exits 0 on a full round trip, 1 otherwise, naming the failed call on stderr.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
// After sys/socket.h: it uses struct sockaddr and sa_family_t.
#include <linux/vm_sockets.h>

static int fail(const char *what) {
    perror(what);
    return 1;
}

// One line (without its newline) from fd into buf; 0 on success.
static int read_line(int fd, char *buf, size_t size) {
    size_t n = 0;
    while (n + 1 < size) {
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0)
            return -1;
        if (buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = 0;
    return 0;
}

static int guest(unsigned port) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0)
        return fail("socket(AF_VSOCK)");
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return fail("connect");
    const char *hello = "ping-from-l2\n";
    if (write(fd, hello, strlen(hello)) != (ssize_t)strlen(hello))
        return fail("write");
    char line[256];
    if (read_line(fd, line, sizeof(line)) < 0)
        return fail("read");
    printf("vsock-reply %s\n", line);
    return 0;
}

static int host(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return fail("socket(AF_UNIX)");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "path too long\n");
        return 1;
    }
    strcpy(addr.sun_path, path);
    unlink(path);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 1) < 0)
        return fail("bind/listen");
    int conn = accept(fd, NULL, NULL);
    if (conn < 0)
        return fail("accept");
    char line[256];
    if (read_line(conn, line, sizeof(line)) < 0)
        return fail("read");
    printf("vsock-got %s\n", line);
    fflush(stdout);
    const char *pong = "pong-from-l1\n";
    if (write(conn, pong, strlen(pong)) != (ssize_t)strlen(pong))
        return fail("write");
    // Let the guest read the reply before the stream closes.
    char rest[16];
    while (read(conn, rest, sizeof(rest)) > 0) {
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "guest") == 0)
        return guest((unsigned)strtoul(argv[2], NULL, 10));
    if (argc == 3 && strcmp(argv[1], "host") == 0)
        return host(argv[2]);
    fprintf(stderr, "usage: vsock-ping guest PORT | vsock-ping host PATH\n");
    return 2;
}
