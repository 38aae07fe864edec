/* The floor of a userspace direct-return hop (bench/tap_floor.py): read a frame from a TAP,
   and if it is IPv4 to the VIP, rewrite its MACs and write it back. No flow table, no
   checks, no counters beyond three: what any userspace forwarder on a TAP pays at least.
   usage: tapfwd TAP LB_MAC BACKEND_MAC VIP [spin]   (spin: never sleep in poll) */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/ether.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: tapfwd TAP LB_MAC BACKEND_MAC VIP [spin]\n");
        return 2;
    }
    unsigned char lb[6], be[6], buf[65536];
    struct ether_addr *m;
    if (!(m = ether_aton(argv[2]))) { fprintf(stderr, "tapfwd: bad LB_MAC\n"); return 2; }
    memcpy(lb, m, 6);
    if (!(m = ether_aton(argv[3]))) { fprintf(stderr, "tapfwd: bad BACKEND_MAC\n"); return 2; }
    memcpy(be, m, 6);
    in_addr_t vip = inet_addr(argv[4]);
    int spin = argc > 5 && strcmp(argv[5], "spin") == 0;
    int fd = open("/dev/net/tun", O_RDWR);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0) { perror("tapfwd: TUNSETIFF"); return 1; }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    long frames = 0, forwarded = 0, wakeups = 0;
    printf("ready\n");
    fflush(stdout);
    while (!stop) {
        if (!spin) {
            struct pollfd p = {fd, POLLIN, 0};
            if (poll(&p, 1, 200) <= 0)
                continue;
            wakeups++;
        }
        for (;;) {   /* drain the queue, then sleep (or spin) again */
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0)
                break;
            frames++;
            if (n < 34 || buf[12] != 0x08 || buf[13] != 0x00 || memcmp(buf + 30, &vip, 4))
                continue;
            memcpy(buf, be, 6);
            memcpy(buf + 6, lb, 6);
            if (write(fd, buf, n) == n)
                forwarded++;
        }
    }
    printf("{\"frames\": %ld, \"forwarded\": %ld, \"wakeups\": %ld}\n", frames, forwarded, wakeups);
    return 0;
}
