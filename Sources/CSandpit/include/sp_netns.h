// A listening TCP socket created inside another network namespace.
#ifndef SP_NETNS_H
#define SP_NETNS_H

// Switches the calling thread into the network namespace nsfd, binds a TCP
// listener to 127.0.0.1:port there, and switches back. Call it on a thread
// of its own: if switching back fails the thread must not be reused
// (returns -2 then). Returns the listening fd or -1 with errno.
int sp_listen_in_netns(int nsfd, unsigned short port);
// An unconnected TCP socket (AF_INET or AF_INET6) that belongs to the network
// namespace nsfd: connect() on it reaches that namespace's loopback from any
// thread. Same thread rules and return values as sp_listen_in_netns.
int sp_socket_in_netns(int nsfd, int family);
#endif
