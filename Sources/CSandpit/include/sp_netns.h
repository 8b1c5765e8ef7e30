// A listening TCP socket created inside another network namespace.
#ifndef SP_NETNS_H
#define SP_NETNS_H

// Switches the calling thread into the network namespace nsfd, binds a TCP
// listener to 127.0.0.1:port there, and switches back. Call it on a thread
// of its own: if switching back fails the thread must not be reused
// (returns -2 then). Returns the listening fd or -1 with errno.
int sp_listen_in_netns(int nsfd, unsigned short port);
#endif
