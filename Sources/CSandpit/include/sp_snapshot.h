// Point-in-time copies of sandbox disks: hold the writers (freeze the
// filesystem, or stop them and sync it), clone the image file by reference
// (reflink), let them go. ioctl is variadic and syncfs is _GNU_SOURCE, hence C.
#ifndef SP_SNAPSHOT_H
#define SP_SNAPSHOT_H

// FIFREEZE / FITHAW on the filesystem holding fd (any fd on it; CAP_SYS_ADMIN).
int sp_fs_freeze(int fd);
int sp_fs_thaw(int fd);
// syncfs: writes out everything dirty of the filesystem holding fd.
int sp_fs_sync(int fd);
// FICLONE: dst shares src's blocks (copy-on-write). -1 with EOPNOTSUPP/EXDEV
// where the filesystem cannot.
int sp_clone_file(int src_fd, int dst_fd);
// Marks a layer directory opaque for overlayfs: trusted.overlay.opaque, or
// user.overlay.opaque for overlays mounted with userxattr (rootless).
int sp_mark_opaque(int dir_fd, int user_xattr);
// Whiteout test for overlayfs: a character device 0:0.
int sp_is_whiteout(unsigned mode, unsigned long long rdev);
#endif
