"""Errors derivs raises that users may want to catch by type (framework-free)."""

from __future__ import annotations


class StateError(ValueError):
    """f cannot be differentiated as it stands, because of state it updates or
    reads (a BatchNorm in train mode updating its running statistics, a module
    sharded by FSDP). The message says what to change."""
