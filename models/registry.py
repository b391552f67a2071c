"""The architecture registry that train.py, the runtime and the exporters share: the
one list of model modules, each declaring its ``Architecture`` record (see
``models.architecture``) as ``ARCHITECTURE``. The dependency runs one way: the
registry imports the models, the models import ``models.architecture``."""
from __future__ import annotations

from models import umt, wavenet, waveunet
from models.architecture import PRECISIONS, Architecture, build_in_precision  # noqa: F401 (for the CLIs)

ARCHITECTURES: dict[str, Architecture] = {
    "waveunet": waveunet.ARCHITECTURE,
    "wavenet": wavenet.ARCHITECTURE,
    "umt": umt.ARCHITECTURE,
}
