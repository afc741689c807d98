"""An in-process Kubernetes API emulator for the TaskAction custom resource.

Test infrastructure: real HTTP/1.1 on loopback, served to the official ``kubernetes``
client and to ``kubectl``. See ``kube_emulator.emulator.Emulator`` and
``/work/shared/reference/kubernetes-api.md`` (the behaviour it follows).
"""

from .emulator import Emulator
from .errors import StatusError
from .faults import Faults

__all__ = ["Emulator", "Faults", "StatusError"]
