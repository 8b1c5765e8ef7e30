// A user namespace kept only for its id map (for idmapped mounts).
#ifndef SP_IDMAP_H
#define SP_IDMAP_H
// A descriptor on a new user namespace that maps ids 0..count-1 onto
// host_base..; -1 with errno on failure.
int sp_idmap_userns(unsigned host_base, unsigned count);
#endif
