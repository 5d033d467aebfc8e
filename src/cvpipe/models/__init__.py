"""Model architectures, one file each, and the registry from params name to builder."""
