"""Process-wide state the tests share, set by fixtures (importing a test module changes nothing).

- torch runs on one thread for the whole session: the suite is sized for two CPU cores shared
  with other work, and one thread is the fastest there for models this small; the number is put
  back when the session ends.
- The task registry is process-wide: a task a test registers is gone when the test ends.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def task_registry():
    """The registry as it was before the test (built-in suites included), put back after it."""
    from opengato import tasks

    before = tasks.registry_snapshot()
    yield
    tasks.install_registry(before)
