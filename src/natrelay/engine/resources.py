"""Process resource limits a relay needs before it accepts its first connection.

Every paired session holds at least two descriptors (four while a splice pipe is
in use), so the default soft limit of 1,024 caps a relay at a few hundred
sessions.  The soft limit may be raised to the hard limit without privileges.
"""

from __future__ import annotations

import logging

__all__ = ["fd_budget", "raise_nofile_limit"]

_log = logging.getLogger(__name__)


def raise_nofile_limit(log: logging.Logger | None = None) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE as far as allowed; return ``(old, new)`` soft limits.

    Logs the outcome because an operator chasing "too many open files" needs to
    see which limit the relay actually got.  On platforms without ``resource``
    (Windows) nothing changes and ``(-1, -1)`` comes back.
    """
    logger = log if log is not None else _log
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        logger.info("RLIMIT_NOFILE: not available on this platform")
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        # Linux refuses an infinite soft limit for descriptors; nr_open is the ceiling.
        target = _nr_open(default=1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        logger.info("RLIMIT_NOFILE: soft limit %d already at the hard limit", soft)
        return (soft, soft)
    new = soft
    for candidate in (target, 1 << 20, 1 << 16):
        if candidate <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (candidate, hard))
        except (ValueError, OSError):
            continue
        new = candidate
        break
    if new == soft:
        logger.warning("RLIMIT_NOFILE: could not raise soft limit %d (hard %s)", soft, _fmt(hard))
    else:
        logger.info("RLIMIT_NOFILE: raised soft limit from %d to %d (hard %s)", soft, new, _fmt(hard))
    return (soft, new)


def fd_budget() -> int:
    """The current soft descriptor limit, for sizing session caps (``-1`` if unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return -1
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return -1 if soft == resource.RLIM_INFINITY else soft


def _nr_open(default: int) -> int:
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return default


def _fmt(limit: int) -> str:
    import resource

    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
