"""Children that the tests interrupt must see Ctrl-C, whatever the test runner inherited.

A shell without job control starts background commands with SIGINT ignored, and an ignored
disposition is inherited through exec: Python then installs no KeyboardInterrupt handler, and a test
that sends SIGINT to a child would wait for a signal the child never takes. So those children get
the default disposition back before they exec.
"""

from __future__ import annotations

import signal


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
