"""The mount: FUSE adapter, daemon wiring, launch and preflight, runtime records, and the
umount/commit/status commands.
"""
