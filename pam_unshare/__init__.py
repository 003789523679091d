"""pam-unshare: every su, sudo and ssh login in its own PID namespace with its own /proc."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pam-unshare")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
