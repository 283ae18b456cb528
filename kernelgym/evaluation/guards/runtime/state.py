"""The runtime guards' shared, process-wide state in one object.

The launch wrappers, the audit hook and the call wrappers are installed once per process and stay
in place; they consult `STATE` to know whether (and for which guard) to act.
"""

from __future__ import annotations

import threading
from typing import Any


class GuardState:
    """Which guard records launches, which enforces the policy, and what is installed."""

    __slots__ = ("active", "enforce", "tls", "audit_hooked", "calls_wrapped")

    def __init__(self) -> None:
        # RuntimeGuards (typed Any: the guard module imports this one)
        self.active: Any = None    # the guard recording launches (install .. finish)
        self.enforce: Any = None   # the guard enforcing the audit policy (inside sandboxed())
        self.tls = threading.local()               # .busy: the audit hook is handling an event
        self.audit_hooked = False
        self.calls_wrapped = False


STATE = GuardState()
