/*
 * cqueue: an accept-all NFQUEUE consumer on libnetfilter_queue, the
 * reference point of the queue benchmark (make bench-queue).
 *
 *   cqueue QUEUE [batch|mmsg]
 *
 * Without a mode every packet gets its own verdict from the callback
 * (nfq_set_verdict). With "batch", one nfq_set_verdict_batch answers
 * everything read so far whenever the socket has nothing more to read, or
 * after 64 packets. With "mmsg", one recvmmsg takes up to 16 datagrams and
 * one nfq_set_verdict_batch answers them: the fewest system calls per
 * packet libnetfilter_queue allows. It prints
 * "ready" once bound, and the packets it answered when SIGTERM or SIGINT
 * ends it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <linux/netlink.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

static volatile sig_atomic_t stop;
static unsigned long long answered;
static int batch;
static uint32_t last_id;
static int unanswered;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *nfmsg, struct nfq_data *nfa, void *data)
{
	(void)nfmsg; (void)data;
	struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
	if (!ph)
		return 0;
	uint32_t id = ntohl(ph->packet_id);
	if (batch) {
		last_id = id;
		unanswered++;
		return 0;
	}
	answered++;
	return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: cqueue QUEUE [batch]\n");
		return 2;
	}
	int num = atoi(argv[1]);
	batch = argc > 2 && (strcmp(argv[2], "batch") == 0 || strcmp(argv[2], "mmsg") == 0);
	int mmsg = argc > 2 && strcmp(argv[2], "mmsg") == 0;

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal; /* no SA_RESTART: recv returns EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	struct nfq_handle *h = nfq_open();
	if (!h) {
		perror("nfq_open");
		return 1;
	}
	struct nfq_q_handle *qh = nfq_create_queue(h, num, on_packet, NULL);
	if (!qh) {
		perror("nfq_create_queue");
		return 1;
	}
	if (nfq_set_mode(qh, NFQNL_COPY_PACKET, 0xffff) < 0) {
		perror("nfq_set_mode");
		return 1;
	}
	nfq_set_queue_maxlen(qh, 4096);
	int fd = nfq_fd(h);
	int one = 1, rbuf = 4 << 20;
	setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rbuf, sizeof rbuf) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rbuf, sizeof rbuf);
	printf("ready\n");
	fflush(stdout);

	static char buf[0xffff + 8192] __attribute__((aligned));
	enum { VLEN = 16 };
	static char bufs[VLEN][0xffff + 8192] __attribute__((aligned));
	struct iovec iov[VLEN];
	struct mmsghdr msgs[VLEN];
	memset(msgs, 0, sizeof msgs);
	for (int i = 0; i < VLEN; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = sizeof bufs[i];
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	while (mmsg && !stop) {
		int n = recvmmsg(fd, msgs, VLEN, MSG_WAITFORONE, NULL);
		if (n < 0) {
			if (errno == EINTR || errno == ENOBUFS)
				continue;
			perror("recvmmsg");
			break;
		}
		for (int i = 0; i < n; i++)
			nfq_handle_packet(h, bufs[i], (int)msgs[i].msg_len);
		if (unanswered) {
			nfq_set_verdict_batch(qh, last_id, NF_ACCEPT);
			answered += unanswered;
			unanswered = 0;
		}
	}
	while (!mmsg && !stop) {
		ssize_t n = recv(fd, buf, sizeof buf, batch ? MSG_DONTWAIT : 0);
		if (n < 0 && errno == EAGAIN && batch) {
			if (unanswered) {
				nfq_set_verdict_batch(qh, last_id, NF_ACCEPT);
				answered += unanswered;
				unanswered = 0;
			}
			n = recv(fd, buf, sizeof buf, 0);
		}
		if (n < 0) {
			if (errno == EINTR || errno == ENOBUFS)
				continue;
			perror("recv");
			break;
		}
		nfq_handle_packet(h, buf, (int)n);
		if (unanswered >= 64) {
			nfq_set_verdict_batch(qh, last_id, NF_ACCEPT);
			answered += unanswered;
			unanswered = 0;
		}
	}
	printf("answered %llu\n", answered + unanswered);
	nfq_destroy_queue(qh);
	nfq_close(h);
	return 0;
}
