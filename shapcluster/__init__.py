"""shapcluster: a Ray cluster from plain SSH hosts, and exact distributed KernelSHAP on it."""

__version__ = "0.1.0"
