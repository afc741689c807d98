"""An in-process Kubernetes API emulator for the TaskAction custom resource.

Test infrastructure: real HTTP/1.1 on loopback, served to the official ``kubernetes``
client and to ``kubectl``. See ``kube_emulator.emulator.Emulator``. The behaviour it follows
is the public one: the API concepts
(https://kubernetes.io/docs/reference/using-api/api-concepts/) and the API conventions
(https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md).
"""

from .emulator import Emulator
from .errors import StatusError
from .faults import Faults

__all__ = ["Emulator", "Faults", "StatusError"]
