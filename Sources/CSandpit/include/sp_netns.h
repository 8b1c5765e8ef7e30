// Sockets that belong to another network namespace (a sandbox's).
#ifndef SP_NETNS_H
#define SP_NETNS_H

// A TCP listener on 127.0.0.1:port in the network namespace nsfd, made on a
// short-lived thread of its own (the caller's namespaces do not change).
// Returns the listening fd or -1 with errno.
int sp_listen_in_netns(int nsfd, unsigned short port);
// An unconnected TCP socket (AF_INET or AF_INET6) that belongs to the network
// namespace nsfd: connect() on it reaches that namespace's loopback from any
// thread. Same rules and return values as sp_listen_in_netns.
int sp_socket_in_netns(int nsfd, int family);
#endif
