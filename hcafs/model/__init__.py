"""The mounted tree, pending bundles and entries: no FUSE, no errno, no HTTP, no SQL."""
